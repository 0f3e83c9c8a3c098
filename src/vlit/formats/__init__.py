"""Dataset formats in and out: LLaVA, ShareGPT, MIMIC-IT, the paper's format, JSONL, Parquet.

`FORMATS` maps each format name to its reader and writer class. Readers turn a file into
`Sample` objects, keeping every source field vlit does not model in ``Sample.extra`` (see
`vlit.formats.base`), so a file read and written in the same format comes back unchanged.
`DatasetImporter` adds the image checks and counts that `vlit import` reports.

Example:
    >>> reader_class, writer_class = FORMATS["llava"]
    >>> context = ImportContext(images=Path("images"), workdir=Path("run/images/llava"))
    >>> samples = list(reader_class().read(Path("llava.json"), context))   # doctest: +SKIP
    >>> writer_class().write(samples, Path("copy.json")).samples           # doctest: +SKIP
    2183
"""

from __future__ import annotations

from pathlib import Path

from vlit.formats.base import FormatReader, FormatWriter, ImportContext, WriteCounts
from vlit.formats.importing import DatasetImporter, ImportCounts, check_format_name, export_samples
from vlit.formats.jsonl import JsonlReader, JsonlWriter
from vlit.formats.llava import LlavaReader, LlavaWriter
from vlit.formats.mimicit import MimicItReader, MimicItWriter
from vlit.formats.paper import PaperReader, PaperWriter
from vlit.formats.parquet import ParquetReader, ParquetWriter
from vlit.formats.sharegpt import ShareGptReader, ShareGptWriter
from vlit.formats.sniff import sniff_format

FORMATS: dict[str, tuple[type[FormatReader], type[FormatWriter]]] = {
    "llava": (LlavaReader, LlavaWriter),
    "sharegpt": (ShareGptReader, ShareGptWriter),
    "mimicit": (MimicItReader, MimicItWriter),
    "paper": (PaperReader, PaperWriter),
    "jsonl": (JsonlReader, JsonlWriter),
    "parquet": (ParquetReader, ParquetWriter),
}
FORMAT_NAMES = tuple(FORMATS)


def detect_format(path: Path) -> str:
    """The format of a file by its content (what ``--format auto`` does)."""
    return sniff_format(path, FORMAT_NAMES)


__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "DatasetImporter",
    "FormatReader",
    "FormatWriter",
    "ImportContext",
    "ImportCounts",
    "WriteCounts",
    "check_format_name",
    "detect_format",
    "export_samples",
]
