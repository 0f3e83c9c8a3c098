"""`vlit bench`, `vlit tune`, `vlit tune-export` and `vlit correlate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlit.cli.common import console, emit_summary, progress_bar
from vlit.errors import ConfigError

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")]
FamilyOption = Annotated[
    str | None,
    typer.Option(
        "--family",
        help="openflamingo, or auto (default: openflamingo.json in the folder makes an "
        "OpenFlamingo, anything else is a transformers checkpoint).",
    ),
]


def bench(
    questions: Annotated[Path, typer.Argument(help="SEED-Bench question JSON.")],
    images: Annotated[Path, typer.Option("--images", help="Folder the data_id paths are in.")],
    model: Annotated[
        str, typer.Option("--model", help="Checkpoint folder, adapter folder or Hub id.")
    ],
    mode: Annotated[
        str, typer.Option("--mode", help="likelihood (SEED-Bench's protocol) or generate.")
    ] = "likelihood",
    aggregation: Annotated[
        str,
        typer.Option("--aggregation", help="Choice score: sum (SEED-Bench) or mean log-prob."),
    ] = "sum",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Questions per batch.")] = 4,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write per-question results here (JSON).")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="Name of the data the model was tuned on (for correlate)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cuda, cuda:1, cpu (default: GPU if present).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.")
    ] = None,
    family: FamilyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a vision-language model on SEED-Bench style multiple-choice questions."""
    from vlit.evaluate.bench import check_bench_paths, run_bench
    from vlit.evaluate.models import load_vision_language_model

    check_bench_paths(questions, images=images, out=out)  # before the slow model load
    console.print(f"loading {model} ...")
    vlm = load_vision_language_model(model, device=device, dtype=dtype, family=family)
    with progress_bar() as progress:
        task = progress.add_task("bench", total=None)
        result = run_bench(
            questions,
            images=images,
            model=vlm,
            mode=mode,  # type: ignore[arg-type]  # checked by run_bench
            aggregation=aggregation,  # type: ignore[arg-type]
            batch_size=batch_size,
            dataset=dataset,
            on_progress=lambda n: progress.advance(task, n),
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    summary = result.summary()
    if out is not None:
        summary["out"] = str(out)
    emit_summary("bench", summary, as_json=as_json)


def tune(
    run: Annotated[Path, typer.Argument(help="Run directory (kept samples are used).")],
    model: Annotated[str, typer.Option("--model", help="Base checkpoint folder or Hub id.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the adapter and processor.")],
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset", help="llava-7b, blip2, openflamingo-3b or tiny (default: by model type)."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Passes over the data.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")
    ] = None,
    lora_r: Annotated[
        int | None, typer.Option("--lora-r", help="LoRA rank (alpha keeps the preset's ratio).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size.")] = None,
    max_samples: Annotated[
        int | None,
        typer.Option("--max-samples", help="Sample the run down to this many (seeded)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling and shuffling.")] = 0,
    device: Annotated[str | None, typer.Option("--device", help="cuda, cpu, ...")] = None,
    family: FamilyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Fine-tuning on a run's samples: LoRA for LLaVA- and BLIP-2-style models, the Flamingo
    modules for OpenFlamingo."""
    from vlit.evaluate.models import OPENFLAMINGO, model_family, pick_device
    from vlit.evaluate.tuning import LoraTuner, resolve_preset

    chosen = model_family(model, family)
    model_type = OPENFLAMINGO if chosen == OPENFLAMINGO else _model_type(model)
    settings = resolve_preset(
        preset,
        family=model_type,
        epochs=epochs,
        learning_rate=lr,
        lora_r=lora_r,
        batch_size=batch_size,
    )
    trained = (
        ", ".join(settings.fully_trained)
        if settings.lora_target == "none"
        else f"LoRA r {settings.lora_r}"
    )
    console.print(
        f"tuning {model} with preset {settings.name} on {pick_device(device)} "
        f"(lr {settings.learning_rate}, {trained})"
    )
    tuner = LoraTuner(
        preset=settings,
        max_steps=max_steps,
        max_samples=max_samples,
        seed=seed,
        device=device,
        family=chosen,
    )
    with progress_bar() as progress:
        task = progress.add_task("tune", total=max_steps)

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, description=f"tune (loss {loss:.3f})")

        result = tuner.tune(run, model=model, out=out, on_step=on_step)
    emit_summary("tune", result.summary(), as_json=as_json)


def tune_export(
    run: Annotated[Path, typer.Argument(help="Run directory (kept samples are used).")],
    format: Annotated[
        str, typer.Option("--format", help="llava or llamafactory (openflamingo: see docs).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the training files in.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Dataset name (LLaMA-Factory's dataset_info).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a run's samples as LLaVA or LLaMA-Factory training files."""
    from vlit.evaluate.export import export_for_training

    summary = export_for_training(run, format=format, out=out, dataset_name=name)
    emit_summary("tune-export", summary.summary(), as_json=as_json)


def correlate(
    more_indicators: Annotated[
        list[Path] | None,
        typer.Argument(
            help="More indicator tables (the files after --indicators).", show_default=False
        ),
    ] = None,
    indicators: Annotated[
        list[Path] | None,
        typer.Option("--indicators", help="Indicator tables, one per dataset (JSON)."),
    ] = None,
    results: Annotated[
        list[Path] | None,
        typer.Option("--results", help="Benchmark results: CSV, JSON rows or `vlit bench` out."),
    ] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Heat map file (.png or .svg).")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="HTML page with everything.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Correlation table: .csv, or .json (all).")
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="Heat map colour: pearson or spearman.")
    ] = "pearson",
    as_json: JsonFlag = False,
) -> None:
    """Correlate dataset indicators with the accuracy of models tuned on the datasets."""
    from vlit.evaluate.correlate import (
        correlate as run_correlation,
    )
    from vlit.evaluate.correlate import (
        load_benchmark_results,
        load_indicator_tables,
        write_heat_map,
        write_html,
        write_table,
    )

    tables = [*(indicators or []), *(more_indicators or [])]
    if not tables or not results:
        raise ConfigError(
            "give indicator tables and benchmark results",
            fix="vlit correlate --indicators A.json B.json C.json --results results.csv",
        )
    study = run_correlation(load_indicator_tables(tables), load_benchmark_results(results))
    summary = study.summary()
    if out is not None:
        summary["out"] = str(write_table(study, out))
    if png is not None:
        summary["figure"] = str(write_heat_map(study, png, method=method))
    if html is not None:
        summary["html"] = str(write_html(study, html, method=method))
    if as_json:
        summary["study"] = study.to_json()
    emit_summary("correlate", summary, as_json=as_json)


def _model_type(model: str) -> str:
    """The config's model_type without loading weights (an adapter folder reads its base)."""
    from vlit.evaluate.models import ADAPTER_CONFIG

    folder = Path(model)
    if (folder / ADAPTER_CONFIG).is_file():
        raise ConfigError(
            f"'{model}' is a LoRA adapter; tune from its base model",
            fix="pass the base checkpoint as --model",
        )
    config = folder / "config.json"
    if config.is_file():
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    from vlit.evaluate.models import load_model_config

    return str(load_model_config(model).model_type)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("bench")(bench)
    app.command("tune")(tune)
    app.command("tune-export")(tune_export)
    app.command("correlate")(correlate)
