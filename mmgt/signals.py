"""SIGTERM handled like Ctrl+C by the command-line tools, and held where a lock is taken.

Python's default SIGTERM action ends the process at once, skipping ``finally`` blocks, so a job
runner's or ``kill``'s stop would leave a render's hidden temporary file (or an export's
temporary folder) behind. Inside :func:`sigterm_as_interrupt` the signal raises
:class:`Terminated` instead, the same cleanup as for Ctrl+C runs, and the tool exits with 143.

An exception from a signal handler can strike between a lock's acquisition and the ``with``
block that would release it (CPython bpo-29988), e.g. inside ``queue.Queue.put``; the lock then
stays taken and the cleanup that needs it waits forever. Code that hands work to other threads
runs those steps inside :func:`interrupts_held`: a Ctrl+C or SIGTERM arriving there is raised
when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_INTERRUPTED = 130  # Ctrl+C (128 + SIGINT)
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's exit code for a stop by Ctrl+C (130) or SIGTERM (143)."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def interrupted(exc: KeyboardInterrupt) -> str:
    """``interrupted`` or ``interrupted (SIGTERM)``, for a tool's last line."""
    return f"interrupted ({exc})" if str(exc) else "interrupted"


class _Held:
    """How deep the main thread is in :func:`interrupts_held`, and the stop it holds back.
    Process-wide by nature: signal handlers run in the main thread of the process."""

    depth = 0
    pending: KeyboardInterrupt | None = None


def _on_signal(signum: int, frame: object) -> None:
    exc = Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()
    if _Held.depth:
        _Held.pending = _Held.pending or exc
        return
    raise exc


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) and
    SIGINT ``KeyboardInterrupt``, both held inside :func:`interrupts_held`; the previous
    handlers are restored after it. A signal the process was started ignoring stays ignored
    (``nohup``, or a shell's background job, which ignores SIGINT). Only the main thread can
    set handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        s: signal.signal(s, _on_signal)
        for s in (signal.SIGTERM, signal.SIGINT)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _Held.pending = None


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Run the block without a Ctrl+C or SIGTERM (of :func:`sigterm_as_interrupt`) breaking
    in; one that arrives meanwhile is raised as the block ends. For short steps that take a
    lock (a queue's put, a thread's start). Other threads and other handlers are unaffected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Held.depth += 1  # the last step before the block: a signal from here on is held
    try:
        yield
    finally:
        _Held.depth -= 1
        if not _Held.depth and (exc := _Held.pending) is not None:
            _Held.pending = None
            raise exc
