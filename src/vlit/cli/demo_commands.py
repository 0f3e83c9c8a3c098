"""`vlit demo`: the main job on the embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from vlit.cli.common import console, stdout, step_progress
from vlit.demo import DEMO_RUN_DIR, run_demo
from vlit.report.table import indicator_rows


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("demo")(demo_command)


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = DEMO_RUN_DIR,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every stage's summary as one JSON object.")
    ] = False,
) -> None:
    """Run the whole chain on the shipped demo data with the embedded model, offline."""
    with step_progress() as progress:
        summaries = run_demo(out, progress=progress)
    if as_json:
        print(json.dumps({"run_dir": str(out), **summaries}, sort_keys=True, default=str))
        return
    stdout.print(_stages_table(summaries))
    _print_examples(summaries["kept"])
    indicators = Table(title="Dataset indicators (the paper's Table 4)")
    indicators.add_column("indicator")
    indicators.add_column(out.name, justify="right")
    for title, cells in indicator_rows({out.name: {"table": summaries["report"]["indicators"]}}):
        indicators.add_row(title, *cells)
    stdout.print(indicators)
    root = out.resolve()
    console.print(f"\nOutput in {root}:")
    console.print(f"  kept samples   {root / 'kept'}   (vlit cat {out} --stage kept)")
    console.print(f"  dropped        {root / 'dropped'}   (each with its drop_reason)")
    console.print(f"  indicators     {root / 'indicators.json'}")
    console.print(f"  report         {root / 'report.html'}")
    console.print(f"  every count    {root / 'run.json'}  (or vlit demo --json)")


def _stages_table(summaries: dict[str, Any]) -> Table:
    collect, generate = summaries["collect"], summaries["generate"]
    score, filtered = summaries["score"], summaries["filter"]
    source = collect["sources"][0]
    flagged = {
        k: v for k, v in score.get("lint", {}).get("samples_flagged", {}).items() if k != "linted"
    }
    failed = sum(generate["samples_failed"].values())
    journal = generate["journal"]
    table = Table(title="vlit demo", show_header=False)
    table.add_row(
        "collect",
        f"{collect['images']} images, {source['captions']} captions, {source['objects']} "
        f"objects, {source['vqa']} VQA pairs, {source['ocr']} OCR strings",
    )
    table.add_row(
        "generate",
        f"{generate['samples_ok']} samples ok, {failed} failed (kept with their reason); "
        f"{generate['requests_sent']} requests sent, {generate['from_journal']} answered from "
        f"the journal; {journal['tokens_in']} tokens in, {journal['tokens_out']} out in all",
    )
    parsed, total = generate["llm_generations_parsed"], generate["llm_generations"]
    table.add_row(
        "parse",
        f"{parsed} of {total} LLM generations parse ({parsed / max(total, 1):.0%}), "
        f"{generate['samples_schema_valid']} exactly in the JSON schema "
        f"(structured output: {generate['structured']['setting']})",
    )
    table.add_row(
        "score",
        "lint flags "
        + ", ".join(f"{k} {v}" for k, v in flagged.items())
        + f"; grounding: {score.get('grounding', {}).get('with_hallucination', 0)} samples "
        "name objects that are not annotated",
    )
    table.add_row(
        "filter",
        f"{filtered['kept']} kept, {filtered['dropped']} dropped: "
        + ", ".join(f"{k} {v}" for k, v in filtered["dropped_by_reason"].items()),
    )
    return table


def _print_examples(kept: dict[str, Any]) -> None:
    stdout.print(
        f"Kept: {kept['llm_written']} conversations written by the LLM, "
        f"{kept['template']} template samples (annotation adaptation)."
    )
    titles = {"llm": "An LLM-written conversation", "template": "A template sample"}
    for origin, title in titles.items():
        example = kept["examples"].get(origin)
        if example is None:
            continue
        heading = Text(f"\n{title}", style="bold") + f" ({example['sample_id']}):"
        stdout.print(heading, highlight=False)
        for turn in example["turns"]:
            speaker = "User" if turn["role"] == "user" else "AI"
            stdout.print(f"  {speaker}: {turn['text']}", highlight=False, markup=False)
