"""`python -m vlit` is the `vlit` command."""

from __future__ import annotations

from vlit.cli import main

main()
