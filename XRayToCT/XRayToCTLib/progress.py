"""One small callback type for long work: progress reports and cancellation.

A callback receives ``(fraction, message)`` with ``fraction`` in [0, 1]; returning ``False``
asks the work to stop, which then raises :class:`~XRayToCTLib.errors.Cancelled`. The CLI
wraps it around tqdm, the Slicer modules around a progress bar.
"""
from __future__ import annotations

from typing import Callable, Optional

from .errors import Cancelled

ProgressCallback = Callable[[float, str], Optional[bool]]


def report(callback: ProgressCallback | None, fraction: float, message: str = "") -> None:
    """Send one progress report; raise :class:`Cancelled` if the callback says stop."""
    if callback is not None and callback(min(max(float(fraction), 0.0), 1.0), message) is False:
        raise Cancelled(f"cancelled at {fraction:.0%}: {message}".rstrip(": "))


def scaled(callback: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """A callback mapping [0, 1] of a sub-task onto [start, stop] of the parent task."""
    if callback is None:
        return None
    return lambda f, m: callback(start + (stop - start) * f, m)
