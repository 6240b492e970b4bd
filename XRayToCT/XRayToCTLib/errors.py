"""Errors that reach a user as one clear line."""
from __future__ import annotations

import os


class XRayToCTError(Exception):
    """Base class of the errors the library raises for problems a user can fix."""


class InputError(XRayToCTError):
    """Bad input: a file that is missing, unreadable, of the wrong kind or with bad values.

    ``str(err)`` is one line naming the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class TemplateUnavailable(InputError):
    """Registration to a head CT template was required but no template is available.

    The library says what is missing; each face adds how to fix it in its own terms (the
    command line's options, the Slicer module's controls)."""

    def __init__(self, problem: str):
        super().__init__(None, problem)


class NotHounsfield(InputError):
    """A CT's values do not look like Hounsfield units and no rescale fixes them (the face
    says how to give a rescale: the command line's option, the reader's argument)."""


class AmbiguousSeries(InputError):
    """A DICOM folder holds several series and none was chosen (the face says how to choose)."""


class Cancelled(XRayToCTError):
    """Raised when a progress callback asks to stop."""
