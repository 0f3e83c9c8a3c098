"""Parsing JSON and YAML input with one-line errors, shared by collectors and format readers.

Every reader of JSON, JSONL and YAML goes through `loads_json` / `loads_yaml`: a byte order
mark is accepted, anything else that is not UTF-8 is refused, and nesting beyond
``VLIT_MAX_JSON_DEPTH`` (see `vlit.limits`) is refused before the recursive parser sees it.

Example::

    document = loads_json(path.read_bytes(), file=path, what="COCO captions")
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NoReturn

import numpy as np
import yaml

from vlit.errors import InputFileError
from vlit.limits import JSON_DEPTH_VARIABLE, max_json_depth

_QUOTED = re.compile(rb'"[^"]*"')
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = codecs.BOM_UTF8.decode("utf-8")


def decode_utf8(
    raw: bytes, *, file: str | os.PathLike[str], what: str, record: str | int | None = None
) -> str:
    """``raw`` as text: strict UTF-8, a leading byte order mark dropped; else `InputFileError`
    naming the file, the record, the line and the byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        where = f"byte {error.start}" if record is not None else f"line {line}, byte {error.start}"
        raise InputFileError(
            f"not UTF-8 text ({where}: {error.reason})",
            file=str(file),
            record=record,
            fix=f"re-export the {what} file as UTF-8",
        ) from error


def nesting_depth(data: bytes | str, *, quoted: bool = True) -> int:
    """How deep ``[`` and ``{`` nest in a JSON (or flow YAML) text, strings left out.

    Runs at C speed (a regex and numpy), so it can guard the recursive parsers: a file nested
    100,000 deep is refused before it reaches them. ``quoted=False`` counts brackets inside
    strings too (YAML, whose strings need not be quoted).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if quoted:
        # Keep only quotes and brackets, escapes removed first (pairs of backslashes, then
        # escaped quotes), and drop adjacent quote pairs: quotes still alternate open/close and
        # every bracket keeps its place inside or outside a string, but the few strings left
        # (those holding brackets) are cheap to cut out. All at C speed.
        # (each replace only when needed: "\\n" escapes are common, these two are rare)
        escaped_quote = b'\\"' in raw
        if b"\\\\" in raw:
            raw = raw.replace(b"\\\\", b"")
        if escaped_quote:
            raw = raw.replace(b'\\"', b"")
        raw = raw.translate(None, _NOT_STRUCTURE)
        raw = _QUOTED.sub(b"", raw.replace(b'""', b""))
    brackets = np.frombuffer(raw.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def check_depth(
    data: bytes | str,
    *,
    file: str | os.PathLike[str],
    what: str,
    record: str | int | None = None,
    quoted: bool = True,
) -> None:
    """`InputFileError` when ``data`` nests deeper than ``VLIT_MAX_JSON_DEPTH``."""
    limit = max_json_depth()
    if isinstance(data, str):
        openers = data.count("[") + data.count("{")
    else:
        openers = data.count(b"[") + data.count(b"{")
    if openers <= limit:  # cannot nest deeper than it opens
        return
    depth = nesting_depth(data, quoted=quoted)
    if depth > limit:
        raise InputFileError(
            f"nested {depth} levels deep, more than the limit of {limit}",
            file=str(file),
            record=record,
            fix=f"flatten the {what} data, or raise the limit with {JSON_DEPTH_VARIABLE}",
        )


def _fix(what: str) -> str:
    return f"re-download or re-export the {what} file (check it with `python -m json.tool FILE`)"


def loads_json(
    data: bytes | str,
    *,
    file: str | os.PathLike[str],
    what: str,
    record: str | int | None = None,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse one JSON document (a whole file, or one JSONL line with ``record`` naming it).

    Accepts a UTF-8 byte order mark; refuses, as `InputFileError` naming file, record and fix:
    text that is not UTF-8, nesting deeper than ``VLIT_MAX_JSON_DEPTH``, syntax errors and
    integers over Python's digit limit. Lone UTF-16 surrogates (``"\\ud800"``), which no UTF-8
    file can hold, become U+FFFD.
    """
    text = (
        decode_utf8(data, file=file, what=what, record=record)
        if isinstance(data, bytes)
        else data.removeprefix(_BOM)
    )
    check_depth(data, file=file, what=what, record=record)  # bytes as given: no copy
    try:
        document = json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        if record is not None and error.lineno == 1:
            where = f"column {error.colno}"
        problem = f"not valid JSON at {where} ({error.msg})"
        if error.pos >= len(error.doc.rstrip()):
            problem += "; the file ends early, it looks truncated"
        raise InputFileError(problem, file=str(file), record=record, fix=_fix(what)) from error
    except ValueError as error:  # an integer longer than sys.get_int_max_str_digits()
        problem = (
            "a number has more digits than Python reads (4300)"
            if "digits" in str(error)
            else f"not usable JSON ({' '.join(str(error).split())})"
        )
        raise InputFileError(problem, file=str(file), record=record, fix=_fix(what)) from error
    except RecursionError as error:
        raise InputFileError(
            "nested too deeply to parse",
            file=str(file),
            record=record,
            fix=f"flatten the {what} data, or lower {JSON_DEPTH_VARIABLE}",
        ) from error
    # Strict UTF-8 never yields a surrogate; only an escape ("\\ud800") or a str given can.
    if _SURROGATE_ESCAPE.search(text) or (isinstance(data, str) and _LONE_SURROGATE.search(text)):
        document = _replace_lone_surrogates(document)
    return document


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
    return loads_json(raw, file=file, what=what, object_pairs_hook=object_pairs_hook)


def loads_yaml(data: bytes | str, *, file: str | os.PathLike[str], what: str) -> Any:
    """Parse a YAML document (``yaml.safe_load``) with the guards of `loads_json`; a syntax
    error is one line with its line and column."""
    text = (
        decode_utf8(data, file=file, what=what)
        if isinstance(data, bytes)
        else data.removeprefix(codecs.BOM_UTF8.decode("utf-8"))
    )
    check_depth(text, file=file, what=what, quoted=False)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputFileError(
            f"not valid YAML ({yaml_error_line(error)})",
            file=str(file),
            fix=f"correct the YAML syntax of the {what}",
        ) from error
    except (RecursionError, ValueError) as error:
        raise InputFileError(
            f"not usable YAML ({type(error).__name__})",
            file=str(file),
            fix=f"simplify the {what}, or raise the limit with {JSON_DEPTH_VARIABLE}",
        ) from error


def yaml_error_line(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what went wrong and where, without the quoted snippet."""
    if isinstance(error, yaml.MarkedYAMLError):
        parts = [error.context or "", error.problem or ""]
        mark = error.problem_mark or error.context_mark
        text = " ".join(part.strip() for part in parts if part and part.strip())
        if mark is not None:
            text += f" at line {mark.line + 1}, column {mark.column + 1}"
        return text
    return " ".join(str(error).split())


def _replace_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _replace_lone_surrogates(key): _replace_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


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
        self.count = 0  # elements decoded
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
            text = self.buffer[self.position : end]
            check_depth(text, file=self.path, what=self.what, record=self.count)
            if _SURROGATE_ESCAPE.search(text):  # as `loads_json`: lone surrogates become U+FFFD
                value = _replace_lone_surrogates(value)
            self.position = end
            self.count += 1
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
