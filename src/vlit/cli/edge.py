"""The command line's last guard: whatever a reader of hostile input raises becomes one line.

`INPUT_ERRORS` lists what files vlit did not write can make the libraries raise (OS errors on
inputs and outputs, text that is not UTF-8, nesting too deep, numbers too long, decompression
bombs, damaged Parquet); `describe_error` says it in one line with the fix.

Example:
    >>> describe_error(IsADirectoryError(21, "Is a directory", "out"))
    'out: is a directory. Fix: that path is a folder; pass a file path.'
"""

from __future__ import annotations

import errno
from pathlib import Path

import yaml
from PIL import Image

from vlit.errors import ConfigError, VlitError
from vlit.limits import IMAGE_PIXELS_VARIABLE, JSON_DEPTH_VARIABLE

#: Errors that mean "this input (or output path) cannot be used": exit status 2.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    VlitError,
    OSError,
    ValueError,  # UnicodeError, json and Arrow's errors, integers over the digit limit
    RecursionError,
    MemoryError,
    Image.DecompressionBombError,
    yaml.YAMLError,
)

#: At most this many characters of a message are shown (a message may quote a huge field).
MAX_MESSAGE = 600

_OS_FIXES = {
    PermissionError: "check the permissions of that path, or choose another",
    IsADirectoryError: "that path is a folder; pass a file path",
    NotADirectoryError: "a part of that path is a file, not a folder; choose another path",
    FileNotFoundError: "check the path",
    FileExistsError: "remove it or choose another path",
}


def check_output_file(path: Path | None, option: str) -> None:
    """Refuse, before any work, an output file path that is a folder or lies under a file."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(
            f"{option} {path} is a folder", file=str(path), fix=f"pass a file path to {option}"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{option} {path} lies under {parent}, which is a file",
                    file=str(path),
                    fix=f"pass a path in a folder to {option}",
                )
            return


def one_line(text: str) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to `MAX_MESSAGE` characters."""
    flat = " ".join(text.split())
    if len(flat) > MAX_MESSAGE:
        flat = flat[: MAX_MESSAGE - 25] + " ... (message shortened)"
    return flat


def describe_error(error: BaseException) -> str:
    """One line naming what failed, where when known, and the fix."""
    if isinstance(error, VlitError):
        return one_line(str(error))
    if isinstance(error, OSError):
        return one_line(_describe_os_error(error))
    if isinstance(error, UnicodeError):
        return one_line(
            f"text that is not UTF-8 ({error}). Fix: re-export the input files as UTF-8"
        )
    if isinstance(error, RecursionError):
        return (
            "an input is nested too deeply to process. Fix: flatten it, or lower "
            f"{JSON_DEPTH_VARIABLE}"
        )
    if isinstance(error, MemoryError):
        return "out of memory: an input is too large. Fix: split it, or give vlit more memory"
    if isinstance(error, Image.DecompressionBombError):
        return one_line(
            f"an image is too large to decode ({error}). Fix: shrink the image, or raise "
            f"{IMAGE_PIXELS_VARIABLE}"
        )
    return one_line(
        f"cannot use the input ({type(error).__name__}: {error}). Fix: check the input files "
        "(`vlit --debug ...` shows where it failed)"
    )


def _describe_os_error(error: OSError) -> str:
    reason = (error.strerror or type(error).__name__).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    where = error.filename if error.filename is not None else None
    fix = next((fix for kind, fix in _OS_FIXES.items() if isinstance(error, kind)), None)
    if error.errno == errno.ENOSPC:
        fix = "free disk space, or write elsewhere"
    elif error.errno == errno.EROFS:
        fix = "that file system is read-only; write elsewhere"
    elif fix is None:
        fix = "check the path and the disk"
    text = f"{where}: {reason}" if where is not None else reason
    if where is None and error.strerror is None and str(error):
        text = f"{type(error).__name__}: {error}"
    return f"{text}. Fix: {fix}."
