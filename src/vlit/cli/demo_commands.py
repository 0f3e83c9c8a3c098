"""`vlit demo`: the main job on the embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlit.cli.common import console, emit_summary
from vlit.cli.generate_commands import recipe_progress
from vlit.demo import DEMO_RUN_DIR, run_demo


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("demo")(demo_command)


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = DEMO_RUN_DIR,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summaries as one JSON object.")
    ] = False,
) -> None:
    """Run the whole chain on the shipped demo data with the embedded model, offline."""
    with recipe_progress() as progress:
        summaries = run_demo(out, progress=progress)
    emit_summary("demo", {"run_dir": str(out), **summaries}, as_json=as_json)
    if not as_json:
        root = out.resolve()
        console.print(f"\nOutput in [bold]{root}[/bold]:")
        console.print(f"  kept samples   {root / 'kept'}   (vlit cat {out} --stage kept)")
        console.print(f"  dropped        {root / 'dropped'}   (each with its drop_reason)")
        console.print(f"  indicators     {root / 'indicators.json'}")
        console.print(f"  report         {root / 'report.html'}")
