"""SIGTERM handled like Ctrl+C by the command-line tools.

Python's default SIGTERM action ends the process at once, skipping ``finally`` blocks, so a job
runner's or ``kill``'s stop would leave a render's hidden temporary file (or an export's
temporary folder) behind. Inside :func:`sigterm_as_interrupt` the signal raises
:class:`Terminated` instead, the same cleanup as for Ctrl+C runs, and the tool exits with 143.
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


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``); the
    previous handler is restored after it. Only the main thread can set handlers: elsewhere
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
