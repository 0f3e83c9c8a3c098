"""vlit: build, score, filter and analyse vision-language instruction-tuning data."""

from __future__ import annotations

__version__ = "0.1.0"
