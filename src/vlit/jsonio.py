"""Parsing JSON input with one-line errors, shared by collectors and format readers.

Example::

    document = parse_json_bytes(path.read_bytes(), file=path, what="COCO captions")
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NoReturn

from vlit.errors import InputFileError

_WHITE_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER_CHARACTERS = re.compile(r"[-+.0-9eE]*")


def parse_json_bytes(
    raw: bytes,
    *,
    file: str | os.PathLike[str],
    what: str,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse a whole JSON document, or raise `InputFileError` naming ``file``, the position
    and the fix; ``what`` names the file's role in the fix ("COCO captions", "dataset")."""
    try:
        return json.loads(raw, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as error:
        problem = f"not valid JSON at line {error.lineno}, column {error.colno} ({error.msg})"
        if error.pos >= len(error.doc.rstrip()) or error.pos >= len(raw):
            problem += "; the file ends early, it looks truncated"
        raise InputFileError(
            problem,
            file=str(file),
            fix=f"re-download or re-export the {what} file "
            "(check it with `python -m json.tool FILE`)",
        ) from error
    except UnicodeDecodeError as error:
        raise InputFileError(
            f"not UTF-8 text (byte {error.start}: {error.reason})",
            file=str(file),
            fix=f"re-export the {what} file as UTF-8 JSON",
        ) from error


def json_type_name(value: Any, *, integers_apart: bool = False) -> str:
    """How JSON calls the type of a parsed value, for messages ("a string", "an object").

    JSON has one number type; ``integers_apart=True`` calls an integral value "an integer"
    (for messages about fields that must be integers).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int) and integers_apart:
        return "an integer"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def starts_with_array(path: str | os.PathLike[str]) -> bool:
    """Whether the file's first character other than white space (and a byte-order mark) is
    ``[``."""
    with open(path, "rb") as handle:
        chunk = handle.read(1 << 16).removeprefix(b"\xef\xbb\xbf")
        while chunk:
            if text := chunk.lstrip(b" \t\n\r"):
                return text.startswith(b"[")
            chunk = handle.read(1 << 16)
    return False


def iter_json_array(
    path: str | os.PathLike[str], *, what: str, chunk_size: int = 1 << 20
) -> Iterator[Any]:
    """The elements of the JSON array in the file ``path``, decoded one at a time.

    Memory holds one element and a read buffer, not the document, so a dataset file of any
    size streams. A UTF-8 byte-order mark is accepted. A file that is not a JSON array (or not
    UTF-8, or ends early) is an `InputFileError` naming the line and column, raised when the
    reader reaches the damage: elements before it have been yielded by then.
    """
    with open(path, "rb") as handle:
        source = _ArraySource(handle, path, what=what, chunk_size=chunk_size)
        source.expect("[", "the top level is not a list")
        if source.peek() == "]":
            source.advance(1)
        else:
            while True:
                yield source.element()
                if source.peek() == "]":
                    source.advance(1)
                    break
                source.expect(",", "expected ',' or ']' after an element")
        if source.peek() != "":
            source.fail("there is more data after the array")


class _ArraySource:
    """A text buffer over a UTF-8 file, refilled as decoding needs; positions for messages."""

    def __init__(
        self, handle: BinaryIO, path: str | os.PathLike[str], *, what: str, chunk_size: int
    ) -> None:
        self.handle = handle
        self.path = path
        self.what = what
        self.chunk_size = chunk_size
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.decoder_json = json.JSONDecoder()
        self.buffer = ""
        self.position = 0
        self.line = 1  # line and column of buffer[0]
        self.column = 1
        self.bytes_read = 0
        self.ended = False
        while not self.buffer and self._fill():
            pass
        if self.buffer.startswith("\ufeff"):
            self.position = 1

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            self.position = _WHITE_SPACE.match(self.buffer, self.position).end()  # type: ignore[union-attr]
            if self.position < len(self.buffer) or not self._fill():
                return self.buffer[self.position : self.position + 1]

    def advance(self, count: int) -> None:
        self.position += count

    def expect(self, character: str, problem: str) -> None:
        if self.peek() != character:
            self.fail(problem)
        self.advance(1)

    def element(self) -> Any:
        """Decode the element at the current position, reading more until it is complete."""
        self.peek()
        while True:
            try:
                value, end = self.decoder_json.raw_decode(self.buffer, self.position)
            except json.JSONDecodeError as error:
                if self._fill():
                    continue
                self.fail(f"{error.msg}", at=error.pos)
            except RecursionError:
                self.fail("an element is nested too deeply to decode")
            except ValueError as error:  # e.g. an integer over Python's digit limit
                self.fail(f"an element cannot be decoded ({error})")
            if self._may_go_on(end) and self._fill():
                continue  # a number or literal may go on in the next chunk
            self.position = end
            return value

    def _may_go_on(self, end: int) -> bool:
        """Whether the element that ends at ``end`` may be the start of a longer one: it
        reaches the end of the buffer, or it is a number whose characters do ("1" of "1.5")."""
        number_end = _NUMBER_CHARACTERS.match(self.buffer, self.position).end()  # type: ignore[union-attr]
        return len(self.buffer) in (end, number_end)

    def fail(self, problem: str, *, at: int | None = None) -> NoReturn:
        offset = self.position if at is None else at
        before = self.buffer[:offset]
        newlines = before.count("\n")
        line = self.line + newlines
        column = offset - before.rfind("\n") if newlines else self.column + offset
        if self.ended and offset >= len(self.buffer.rstrip()):
            problem += "; the file ends early, it looks truncated"
        raise InputFileError(
            f"not a valid JSON array at line {line}, column {column} ({problem})",
            file=str(self.path),
            fix=f"re-download or re-export the {self.what} file "
            "(check it with `python -m json.tool FILE`)",
        )

    def _fill(self) -> bool:
        """Read the next chunk (dropping what was decoded); false at the end of the file."""
        if self.ended:
            return False
        chunk = self.handle.read(self.chunk_size)
        try:
            text = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            raise InputFileError(
                f"not UTF-8 text (byte {self.bytes_read + error.start}: {error.reason})",
                file=str(self.path),
                fix=f"re-export the {self.what} file as UTF-8 JSON",
            ) from error
        self.bytes_read += len(chunk)
        if not chunk:
            self.ended = True
        self._drop_decoded()
        self.buffer += text
        return bool(chunk)

    def _drop_decoded(self) -> None:
        dropped = self.buffer[: self.position]
        newlines = dropped.count("\n")
        if newlines:
            self.line += newlines
            self.column = len(dropped) - dropped.rfind("\n")
        else:
            self.column += len(dropped)
        self.buffer = self.buffer[self.position :]
        self.position = 0
