"""Stops by Ctrl+C or SIGTERM (mmgt.signals): raised as exceptions, held where a lock is taken."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mmgt.signals import Terminated, interrupts_held, sigterm_as_interrupt


def _let_handlers_run() -> None:
    for _ in range(1000):  # backward jumps: CPython runs pending signal handlers here
        pass


def test_a_held_stop_is_raised_when_the_block_ends():
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    finished = False
    with sigterm_as_interrupt():
        with pytest.raises(Terminated, match="SIGTERM"):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                _let_handlers_run()
                with interrupts_held():  # nested: raised only when the outer block ends
                    os.kill(os.getpid(), signal.SIGINT)
                    _let_handlers_run()
                finished = True
        assert finished  # the first stop is the one raised; the block ran to its end
        with pytest.raises(KeyboardInterrupt) as info:  # outside a held block: at once
            os.kill(os.getpid(), signal.SIGINT)
            _let_handlers_run()
        assert not isinstance(info.value, Terminated)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous


# A SIGTERM that strikes where CPython can raise it inside ``queue.Queue.put`` (bpo-29988): the
# queue's lock taken, the block that releases it not yet entered. Before mmgt.signals held stops
# there, the writer's cleanup then waited for that lock for ever (seen once in a full test run
# as a render that did not stop). Run in a child process, so a regression times out, not hangs.
RACE = r"""
import os, queue, signal, sys, types
from pathlib import Path
import numpy as np
import mmgt.video
from mmgt.signals import exit_code, sigterm_as_interrupt

class RacyQueue(queue.Queue):
    fired = False

    def put(self, item, block=True, timeout=None):
        self.not_full.acquire()
        if not RacyQueue.fired:
            RacyQueue.fired = True
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, with the lock taken
                pass
        try:
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()
        finally:
            self.not_full.release()

mmgt.video.queue = types.SimpleNamespace(Queue=RacyQueue)
try:
    with sigterm_as_interrupt():
        with mmgt.video.Mp4Writer(Path(sys.argv[1]), 64) as writer:
            for _ in range(10):
                writer.write(np.zeros((64, 64, 3), np.uint8))
except KeyboardInterrupt as exc:
    sys.exit(exit_code(exc))
"""


def test_a_stop_inside_a_queue_lock_still_removes_the_partial_file(tmp_path):
    out = tmp_path / "x.mp4"
    proc = subprocess.run(
        [sys.executable, "-c", RACE, str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 143, proc.stderr
    assert list(tmp_path.iterdir()) == []  # the hidden partial file is gone, no output


def test_a_signal_the_process_ignores_stays_ignored():
    """A shell's background job starts with SIGINT ignored: Ctrl+C in the terminal is not
    meant for it, and the block must not make it one."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            _let_handlers_run()  # nothing raised
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # still handled
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
