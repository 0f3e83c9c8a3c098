"""Limits on what vlit reads from files it did not write, each configurable by an environment
variable (documented in the README, "Errors").

A file over a limit is refused with one line naming it and the variable that raises the limit;
an image over the pixel limit is one unreadable image, recorded on its record or sample.

==========================  ===========  ===========================================================
variable                    default      bounds
==========================  ===========  ===========================================================
``VLIT_MAX_JSON_DEPTH``     100          nesting of arrays/objects in JSON, JSONL and YAML inputs
``VLIT_MAX_FIELD_BYTES``    1,000,000    one CSV field, one benchmark question or option
``VLIT_MAX_IMAGE_PIXELS``   178,956,970  width x height of an image read (PIL's own bomb limit)
==========================  ===========  ===========================================================

Example:
    >>> max_json_depth()   # doctest: +SKIP
    100
"""

from __future__ import annotations

import os

from vlit.errors import ConfigError

DEFAULT_MAX_JSON_DEPTH = 100
DEFAULT_MAX_FIELD_BYTES = 1_000_000
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

JSON_DEPTH_VARIABLE = "VLIT_MAX_JSON_DEPTH"
FIELD_BYTES_VARIABLE = "VLIT_MAX_FIELD_BYTES"
IMAGE_PIXELS_VARIABLE = "VLIT_MAX_IMAGE_PIXELS"


def max_json_depth() -> int:
    """How deep arrays and objects may nest in a JSON, JSONL or YAML input."""
    return _positive(JSON_DEPTH_VARIABLE, DEFAULT_MAX_JSON_DEPTH)


def max_field_bytes() -> int:
    """How long one CSV field or one benchmark question may be, in bytes of UTF-8."""
    return _positive(FIELD_BYTES_VARIABLE, DEFAULT_MAX_FIELD_BYTES)


def max_image_pixels() -> int:
    """How many pixels (width x height) an image may have to be decoded."""
    return _positive(IMAGE_PIXELS_VARIABLE, DEFAULT_MAX_IMAGE_PIXELS)


def _positive(variable: str, default: int) -> int:
    text = os.environ.get(variable, "").strip().replace("_", "").replace(",", "")
    if not text:
        return default
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(
            f"{variable}={os.environ[variable]!r} is not a positive whole number",
            fix=f"set {variable} to a number such as {default}, or unset it",
        )
    return int(text)
