"""The engine's small exception hierarchy.

Everything a user can cause with bad input is an :class:`InputError` (also a ``ValueError``) whose
message names the problem and, where possible, what to do about it.
"""

from __future__ import annotations


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a client's
    4000-digit number or megabyte string is not a message)."""
    try:
        text = repr(value)
    except ValueError:  # an integer over Python's digit limit for str()
        return "a number too large to show"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MMGTError(Exception):
    """Base class of all engine errors."""


class InputError(MMGTError, ValueError):
    """Bad user input: a file, an argument or a stream that cannot be used."""


class AudioError(InputError):
    """Audio that cannot be decoded or used (corrupt, empty, NaN, unsupported)."""


class ImageError(InputError):
    """An image that cannot be used (unreadable, too small, too large, not a photo)."""


class ImageTooLargeError(ImageError):
    """An image over the size limits (file bytes, pixels or side length), refused unread."""


class NoPersonError(ImageError):
    """No person was found in the photo."""


class NoFaceError(ImageError):
    """A person was found but no face is visible."""


class MissingDependencyError(MMGTError, ImportError):
    """An optional package needed for this feature is not installed."""


class WeightsError(InputError):
    """A checkpoint that cannot be loaded: unsafe pickle, missing/unexpected keys, bad shapes."""
