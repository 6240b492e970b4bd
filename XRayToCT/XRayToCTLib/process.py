"""Long work in a separate process: the ``xraytoct`` command, followed through its log.

3D Slicer's main thread holds Python's GIL while it is idle, so torch work in a Python
thread of the application crawls (it runs only at the main thread's timer ticks). Slicer's
own long work, and extensions such as SlicerMONAIAuto3DSeg, run it in a **process**; so does
XRayToCT. :class:`CommandProcess` runs ``python -m XRayToCTLib.cli <argv>`` with the
library on its path; the command writes its output (progress lines, warnings, the
``error:`` line) to a log file, which the caller reads a little at each poll: no thread, no
pipe to fill, and the log stays for the user to read. :class:`CommandTask` adds a folder
for the inputs and outputs and a ``finish(folder)`` callback that turns the outputs into
the caller's objects once the command succeeded.

The progress lines are those of the command line off a terminal (``reconstruct:  45%
model``, see ``cli``); :func:`parse_progress` reads them. Cancelling kills the process (and
what it started), which also frees the GPU memory it held.

This module imports neither Qt nor Slicer, nor torch: the Slicer module starts and follows
commands before PyTorch is even installed.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import Cancelled, XRayToCTError

__all__ = ["CommandProcess", "CommandTask", "parse_progress", "python_executable", "library_root",
           "PROGRESS_LINE"]

PROGRESS_LINE = re.compile(r"^(?P<task>[A-Za-z][\w .-]*): +(?P<percent>\d{1,3})% ?(?P<message>.*)$")
"""A progress line of the ``xraytoct`` command off a terminal: ``task:  NN% message``."""

LOG_NAME = "xraytoct.log"
"""The command's log (stdout and stderr) in the task's folder."""


def parse_progress(line: str) -> tuple[float, str] | None:
    """``(fraction, message)`` of a progress line (see :data:`PROGRESS_LINE`), else None."""
    match = PROGRESS_LINE.match(line.strip())
    if not match:
        return None
    return min(int(match["percent"]), 100) / 100.0, match["message"].strip()


def library_root() -> Path:
    """The folder that holds the ``XRayToCTLib`` package (put on the command's path)."""
    return Path(__file__).resolve().parent.parent


def python_executable() -> str:
    """The Python that runs the commands: this interpreter, or inside 3D Slicer (whose
    executable is the application, not a Python) its ``PythonSlicer`` launcher."""
    name = Path(sys.executable).name.lower()
    if name.startswith("python"):
        return sys.executable
    for folder in (Path(sys.executable).parent, None):
        found = shutil.which("PythonSlicer", path=str(folder) if folder else None)
        if found:
            return found
    raise XRayToCTError(f"no Python interpreter to run XRayToCT's background commands: "
                        f"{sys.executable} is not one and PythonSlicer is not on the PATH")


class CommandProcess:
    """``python -m XRayToCTLib.cli <argv>`` in a separate process, its output in ``log``.

    Poll :meth:`poll` (or read :attr:`fraction`, :attr:`message`, :attr:`done`, which poll);
    :meth:`cancel` kills it; :meth:`wait` blocks. ``error`` is the text of the last
    ``error:`` line (the command's one-line report of a failure).

    Args:
        argv: the subcommand and its arguments, as for the ``xraytoct`` command.
        log: the file the process writes stdout and stderr to.
        python: the interpreter (default :func:`python_executable`).
        env: extra environment variables.
        threads: torch threads of the process (``OMP_NUM_THREADS``), None to leave as is.
    """

    def __init__(self, argv: Sequence[str], log: str | os.PathLike, *, python: str | None = None,
                 env: dict[str, str] | None = None, threads: int | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.log = Path(log)
        self.fraction = 0.0
        self.message = ""
        self.lines: list[str] = []
        self.error = ""
        self._offset = 0
        self._partial = b""
        self._returned = 0
        self.cancelled = False
        environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        root = str(library_root())
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH", "")) if p)
        if threads:
            environment["OMP_NUM_THREADS"] = str(int(threads))
        command = [python or python_executable(), "-u", "-m", "XRayToCTLib.cli", *self.argv]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            options: dict[str, Any] = {}
            if os.name == "posix":
                options["start_new_session"] = True  # its own process group: cancel kills it all
            else:
                options["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | \
                    getattr(subprocess, "CREATE_NO_WINDOW", 0)
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=environment, **options)
        self.command = command

    def poll(self) -> list[str]:
        """Read what the process has written since the last call; returns the new lines."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        chunks = (self._partial + data).replace(b"\r", b"\n").split(b"\n")
        self._partial = chunks.pop()  # an unfinished line waits for its end
        new = [c.decode("utf-8", "replace").rstrip() for c in chunks if c.strip()]
        for line in new:
            progress = parse_progress(line)
            if progress is not None:
                self.fraction, message = progress
                self.message = message or self.message
            elif line.startswith(("error:", "internal error:")):
                self.error = line.split("error:", 1)[1].strip()
        self.lines += new
        return new

    def new_lines(self) -> list[str]:
        """Lines not returned by an earlier call (after polling)."""
        self.poll()
        lines = self.lines[self._returned:]
        self._returned = len(self.lines)
        return lines

    @property
    def done(self) -> bool:
        """The process has ended (its last output is read)."""
        if self.process.poll() is None:
            return False
        self.poll()
        if self._partial.strip():  # the last line had no newline
            self._partial += b"\n"
            self.poll()
        return True

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def cancel(self) -> None:
        """Stop the command and what it started (terminate, then kill after 5 s)."""
        self.cancelled = True
        if self.process.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, signal.SIGTERM)
            else:
                self.process.terminate()
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            if os.name == "posix":
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
            self.process.wait(5)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        """Block until the command ends; returns its exit status."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"xraytoct {self.argv[0]} still running after {timeout} s") from None
        _ = self.done
        return self.process.returncode

    @property
    def output(self) -> str:
        """Everything the command wrote so far."""
        self.poll()
        return "\n".join(self.lines)

    def failure(self) -> str:
        """What went wrong, in one line: the ``error:`` line, else the last lines."""
        if self.error:
            return self.error
        tail = [line for line in self.lines if parse_progress(line) is None][-3:]
        return (f"xraytoct {self.argv[0]} stopped with exit status {self.returncode}"
                + (": " + " | ".join(tail) if tail else ""))


class CommandTask:
    """A command with its own folder, and what to make of its outputs.

    ``prepare(folder)`` writes the inputs and returns the command's arguments (it runs at
    once, in the caller's thread); ``finish(folder)`` runs in :meth:`result` after the command
    succeeded and returns the task's value (in Slicer: the new nodes). The folder (a new
    temporary folder unless ``folder`` is given) is removed after :meth:`result` unless
    ``keep`` is set. Poll :attr:`done`, :attr:`fraction`, :attr:`message` from a timer, or
    :meth:`wait`; :meth:`cancel` kills the command, and :meth:`result` then raises
    :class:`~XRayToCTLib.errors.Cancelled`. A failed command raises
    :class:`~XRayToCTLib.errors.XRayToCTError` with its ``error:`` line.
    """

    def __init__(self, prepare: Callable[[Path], Sequence[str]], finish: Callable[[Path], Any], *,
                 name: str = "XRayToCT", folder: str | os.PathLike | None = None, keep: bool = False,
                 python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="xraytoct-"))
        self.keep = keep or folder is not None
        self._finish = finish
        self._value: Any = None
        self._finished = False
        try:
            argv = prepare(self.folder)
            self.process = CommandProcess(argv, self.folder / LOG_NAME, python=python, env=env)
        except BaseException:
            self._cleanup()
            raise
        self.started = time.monotonic()

    @property
    def fraction(self) -> float:
        self.process.poll()
        return 1.0 if self._finished else self.process.fraction

    @property
    def message(self) -> str:
        self.process.poll()
        return self.process.message

    @property
    def done(self) -> bool:
        return self.process.done

    @property
    def cancelled(self) -> bool:
        return self.process.cancelled

    def cancel(self) -> None:
        """Kill the command (its result is then :class:`Cancelled`)."""
        self.process.cancel()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the command ends, then return :meth:`result`."""
        self.process.wait(timeout)
        return self.result()

    def result(self) -> Any:
        """After :attr:`done`: ``finish(folder)`` (once), or the command's failure."""
        if not self.done:
            raise RuntimeError(f"{self.name} is still running")
        if self._finished:
            return self._value
        try:
            if self.process.cancelled:
                raise Cancelled(f"{self.name} was cancelled")
            if self.process.returncode != 0:
                raise XRayToCTError(self.process.failure())
            self._value = self._finish(self.folder)
            self._finished = True
            return self._value
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
