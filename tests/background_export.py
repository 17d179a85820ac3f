"""The suite's ONNX exports, built in a low-priority process while other tests run.

Exporting a network means tracing it with torch.export twice (the program, then the ONNX
exporter's decompositions): 10–20 s even for a tiny SMGA, and about 2.5 minutes for the tiny
stage-2 UNet, nearly all of it on one core. The fixtures that need these folders used to build
them in-process; now :class:`BackgroundExport` runs the same ``python -m export.onnx`` commands
one after another from the end of collection, at the lowest CPU priority and on one thread, in
the time other tests (the browser tests, say) leave a core idle, and a fixture waits only for
what is left of its own job. Tests marked ``realtime`` (they measure live timing: frame rates,
lip sync) stop the export while they run (:meth:`BackgroundExport.paused`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOW_PRIORITY = ["nice", "-n", "19"]
TIMEOUT_S = 1200  # once the tests wait, the export has the machine to itself (~4 min in all)


@dataclass
class ExportJob:
    """``python -m export.onnx`` with ``args`` into the job's own folder, which starts as a
    copy of the finished folder of job ``seed`` when one is given."""

    name: str
    args: list[str]
    seed: str | None = None
    folder: Path | None = None  # set by BackgroundExport
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class BackgroundExport:
    """Runs ``jobs`` in order on a worker thread; :meth:`result` waits for one job."""

    def __init__(self, jobs: list[ExportJob], root: Path) -> None:
        self.root = root
        self.log = root / "export.log"
        self.jobs = {job.name: job for job in jobs}
        for job in jobs:
            job.folder = root / job.name / "onnx"
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        self._pausing = False  # a command started meanwhile starts stopped too
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="background-export", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the running export's process for the block (SIGSTOP, then SIGCONT)."""
        with self._lock:
            self._pausing = True
            self._signal(signal.SIGSTOP)
        try:
            yield
        finally:
            with self._lock:
                self._pausing = False
                self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def _run(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with self.log.open("w") as log:
            for job in self.jobs.values():
                try:
                    job.error = self._run_job(job, env, log)
                except OSError as exc:
                    job.error = f"could not run: {exc}"
                finally:
                    job.done.set()
                if self._stopped:
                    return

    def _run_job(self, job: ExportJob, env: dict[str, str], log) -> str | None:  # noqa: ANN001
        if job.seed is not None:
            seed = self.jobs[job.seed]
            if seed.error or not seed.done.is_set():
                return f"its seed job {seed.name} did not finish"
            shutil.copytree(seed.folder, job.folder)
        command = [*LOW_PRIORITY, sys.executable, "-m", "export.onnx", *job.args,
                   "--onnx-dir", str(job.folder)]  # fmt: skip
        with self._lock:
            if self._stopped:
                return "stopped"
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            self._proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            if self._pausing:
                self._proc.send_signal(signal.SIGSTOP)
        if (code := self._proc.wait()) != 0:
            return f"python -m export.onnx {' '.join(job.args)} exited with {code}"
        return None

    def result(self, name: str) -> Path:
        """Job ``name``'s finished folder; raises with the log's tail if its export failed."""
        job = self.jobs[name]
        if not job.done.wait(TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"the background export took over {TIMEOUT_S} s")
        if job.error:
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"background export {name}: {job.error}\n{tail}")
        return job.folder

    def stop(self) -> None:
        """Kill a running export and delete every folder (at the end of the session)."""
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()  # also ends a paused (stopped) process
                self._proc.wait()
        self._thread.join(10)
        shutil.rmtree(self.root, ignore_errors=True)


def make_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="mmgt-test-export-"))
