"""The errors medsamkit raises on purpose, and what each front end makes of them.

Every failure a user can cause or fix is a :class:`MedsamkitError`; its message is one line for that user
(it names the file, the option or the prompt, never a temporary file or a Python ``repr``). Anything else that
escapes the library is a bug. The front ends map them in one place each:

==========================  ==========================  ===========================================
class                        CLI (``cli/main.py``)        web app (``app/server.py``)
==========================  ==========================  ===========================================
:class:`InputError` and      one line, exit 2             ``{"error": message}``, HTTP ``status``
subclasses                                                (422, 413 for :class:`LimitError`)
other ``MedsamkitError``     one line, exit 1             HTTP ``status`` (503 by default)
anything else (a bug)        one line, exit 1, the        HTTP 500 "internal server error", the
                             traceback in a log file      traceback in the server log
==========================  ==========================  ===========================================

:class:`InputError` derives from ``ValueError`` so that code written against the older ``ValueError`` contract
keeps working; new code catches :class:`MedsamkitError` (or a subclass), never a bare ``ValueError``.
"""

from __future__ import annotations

import re


class MedsamkitError(Exception):
    """A failure with a message meant for the user (one line). ``exit_code``: the CLI's exit status;
    ``status``: the web app's HTTP status."""

    exit_code = 1
    status = 503


class InputError(MedsamkitError, ValueError):
    """The user's input cannot be used as given (exit 2, HTTP 422): a file, a prompt or an option."""

    exit_code = 2
    status = 422


class FileInputError(InputError):
    """A file that cannot be read, is of the wrong kind, or does not exist."""


class MissingFileError(FileInputError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


class GeometryError(FileInputError):
    """An image whose geometry cannot be kept exactly in the requested output (e.g. a DICOM series with
    missing slices written as NIfTI), or that cannot be placed on one voxel grid (gantry tilt, mixed
    orientations)."""


class PromptError(InputError):
    """A prompt that does not fit the image: outside it, malformed, or of the wrong kind for the input."""


class OptionError(InputError):
    """An option or a combination of options that cannot be honoured (including output paths)."""


class OutputError(OptionError):
    """An output that must not or cannot be written: it would overwrite an input, it leaves its folder, its
    format does not fit the input, or its folder is not writable."""


class LimitError(InputError):
    """Input larger than a configured limit (HTTP 413): a file, a request body, a decoded volume, a prompt
    count."""

    status = 413


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its class name when it has none), at most ``limit`` chars."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/[^/\s'\"()<>:,;]+)+/([^/\s'\"()<>:,;]*)")


def decoder_detail(text: BaseException | str, limit: int = 160) -> str:
    """A third-party decoder's message (its exception, or the text) made fit for one line of ours: absolute paths
    cut to their file name (an error the web app shows must not tell where the server keeps files), white space
    collapsed, at most ``limit`` characters."""
    return " ".join(_ABSOLUTE_PATH.sub(r"\1", str(text)).split())[:limit]


class MedsamkitWarning(UserWarning):
    """A result that may not be what the user expects (a constant image, a prompt with no foreground point);
    the CLI prints it as one ``medsamkit: warning:`` line, the web app returns it with the result."""
