"""`run_recipe`: the stages a recipe configures, in order (collect, generate, score, filter,
report); `vlit run` calls it.

Each stage reads and writes the run directory, so a rerun resumes: collection is cheap, generation
and the judge answer from the journal, and a stage whose output is current (made from the
current inputs with the recipe's settings, see `vlit.rundir`) is not run again. A stage after
generate runs when its section is in the recipe.

Example:
    >>> summaries = run_recipe(load_recipe("recipe.yaml"))   # doctest: +SKIP
    >>> summaries["filter"].kept                             # doctest: +SKIP
    212
"""

from __future__ import annotations

from vlit.generate.generator import ProgressCallback
from vlit.recipe import Recipe, write_resolved_recipe
from vlit.runners.base import build_runner
from vlit.stages import collect as collect_stage
from vlit.stages import filter as filter_stage
from vlit.stages import generate as generate_stage
from vlit.stages import report as report_stage
from vlit.stages import score as score_stage
from vlit.stages.base import Summary, batch_counter, reused
from vlit.storage import open_run_dir


def run_recipe(recipe: Recipe, *, progress: ProgressCallback | None = None) -> dict[str, Summary]:
    """Run the recipe's stages in order; return each stage's summary.

    Writes ``RUN/recipe.resolved.yaml`` first. Rerunning a finished recipe sends no LLM request
    (answers come from the run's journal) and writes the same samples. A ``run_dir`` on a URL
    is staged (`vlit.storage.open_run_dir`): pulled first, pushed after every stage and when a
    stage fails.
    """
    runner = build_runner(recipe.runner)  # before any work: a wrong Ray address fails now
    backend = generate_stage.backend_for(recipe.generate, recipe.llm)
    with open_run_dir(recipe.run_dir, writer="vlit run") as run:
        write_resolved_recipe(
            recipe, run.root, generator=backend.describe() if backend is not None else None
        )
        run.push()  # a bucket that is missing or not writable fails now, before any work
        summaries: dict[str, Summary] = {}
        if recipe.collect is not None:
            summaries["collect"] = collect_stage.run(run, recipe.collect, runner, progress=progress)
            run.push()
        summaries["generate"] = generate_stage.run(
            run, recipe.generate, runner, llm=recipe.llm, backend=backend, progress=progress
        )
        run.push()
        if recipe.score is not None:
            judge = recipe.score.judge
            judge_llm = None
            if judge is not None and judge.enabled:
                llm = judge.llm or recipe.llm
                judge_llm = llm.to_config(concurrency=recipe.generate.concurrency)
            seed = recipe.generate.seed
            summaries["score"] = reused(
                score_stage.ScoreSummary,
                run,
                ("scores",),
                recipe.score.recorded(judge_llm, seed),
                "score",
            ) or score_stage.run(
                run,
                recipe.score,
                runner,
                judge_llm=judge_llm,
                seed=seed,
                on_batch=batch_counter(progress, "score"),
            )
            run.push()
        if recipe.filter is not None:
            recorded = recipe.filter.model_dump(mode="json")
            summaries["filter"] = reused(
                filter_stage.FilterSummary, run, ("kept", "dropped"), recorded, "filter"
            ) or filter_stage.run(run, recipe.filter, runner)
            run.push()
        if recipe.report is not None:
            summaries["report"] = report_stage.run(run, recipe.report, runner)
            run.push()
    return summaries
