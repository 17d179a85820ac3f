"""The stage-2 ONNX export, built in a low-priority process while other tests run.

``python -m export.onnx`` on the tiny stage-2 models takes about 2.5 minutes on 2 cores, nearly
all of it torch.export tracing the UNet on one core. Started when collection ends, at the
lowest CPU priority and on one thread, it uses the time tests such as the browser tests leave a
core idle; the fixture that needs the folder then waits for what is left. Tests marked
``realtime`` (they measure live timing: frame rates, lip sync) stop it while they run
(:meth:`BackgroundExport.paused`). The commands are the ones the fixture used to run
in-process: the shipped SMGA export, then ``--networks`` adding the stage-2 networks to the
same folder (which keeps the entries already there).
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
from pathlib import Path

from mmgt.models.stage2_steps import STAGE2_NETWORKS

REPO = Path(__file__).resolve().parents[1]
LOW_PRIORITY = ["nice", "-n", "19"]
COMMANDS = (
    ["-m", "export.onnx"],
    ["-m", "export.onnx", "--stage2-preset", "tiny", "--networks", ",".join(STAGE2_NETWORKS)],
)
TIMEOUT_S = 1200  # once the tests wait for it, it has the machine to itself (~150 s)


class BackgroundExport:
    """Runs :data:`COMMANDS` into one folder on a worker thread; :meth:`result` waits."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mmgt-test-export-"))
        self.folder = self.root / "onnx"
        self.log = self.root / "export.log"
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        self._pausing = False  # a command started meanwhile starts stopped too
        self._error: str | None = None
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
            for argv in COMMANDS:
                command = [*LOW_PRIORITY, sys.executable, *argv, "--onnx-dir", str(self.folder)]
                with self._lock:
                    if self._stopped:
                        return
                    self._proc = subprocess.Popen(
                        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                    if self._pausing:
                        self._proc.send_signal(signal.SIGSTOP)
                if (code := self._proc.wait()) != 0:
                    self._error = f"{' '.join(argv)} exited with {code}"
                    return

    def result(self) -> Path:
        """The finished folder; raises with the log's tail if an export failed."""
        self._thread.join(TIMEOUT_S)
        if self._thread.is_alive():
            self.stop()
            raise RuntimeError(f"the background export took over {TIMEOUT_S} s")
        if self._error:
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"background export failed: {self._error}\n{tail}")
        return self.folder

    def stop(self) -> None:
        """Kill a running export and delete its folder (at the end of the session)."""
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()  # also ends a paused (stopped) process
                self._proc.wait()
        self._thread.join(10)
        shutil.rmtree(self.root, ignore_errors=True)
