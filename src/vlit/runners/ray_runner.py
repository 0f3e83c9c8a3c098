"""The Ray Data runner: the same stages as the local runner, spread over a Ray cluster.

CPU stages run as ``map_batches`` functions; stages that load a model (``resources.uses_model``)
run as callable classes, so each actor calls ``setup()`` once and keeps its model. The runner
knows only the ``Step`` contract. Order is preserved, so on the same input the output equals
the local runner's. A stage's ``counts`` (a ``Counter``, when it keeps one) are summed over the
workers by a small actor and added to the driver's stage object, so summaries read the same on
both runners. For the report, each worker reads one shard of the stage, updates a copy of a
`Feed` (the report's indicators, its dropped examples) with it and returns the copy; the driver
merges them in shard order.

Example:
    >>> samples = run_stages_ray([LintStage()], samples, address=None)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from vlit.errors import ConfigError
from vlit.images import is_url
from vlit.rundir import DEFAULT_SHARD_SIZE, RunDir, StageWriter
from vlit.runners.base import Feed, Resources, RunnerSettings, Step
from vlit.schema import SAMPLE_SCHEMA, Sample

FeedT = TypeVar("FeedT", bound=Feed)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ConfigError(
            "the Ray runner needs Ray Data, which is not installed",
            fix='pip install "vlit[ray]"',
        ) from error
    return ray


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (``host:6379``, ``auto``,
    ``ray://host:10001``) or, without one, start a local Ray."""
    ray = _import_ray()
    if not ray.is_initialized():
        if address:
            _check_reachable(address)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:  # "local": a new Ray of our own, never a cluster found on this machine by chance
            ray.init(
                address="local", num_cpus=num_cpus, ignore_reinit_error=True, log_to_driver=False
            )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    return ray


def _check_reachable(address: str) -> None:
    """Fail at once when nothing listens at a ``host:port`` address (Ray itself would retry
    for minutes before giving up)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({error.strerror or error})",
            fix="start one with `ray start --head --port PORT` and pass HOST:PORT (or `auto` on "
            "a node of the cluster); without --address vlit starts a local Ray",
        ) from None


def _to_samples(table: pa.Table) -> list[Sample]:
    return [Sample.from_row(row) for row in table.to_pylist()]


def _to_table(samples: list[Sample]) -> pa.Table:
    return pa.Table.from_pylist([s.to_row() for s in samples], schema=SAMPLE_SCHEMA)


def _count_sink(ray: Any) -> Any:
    """An actor that sums the per-batch ``counts`` deltas of every stage, keyed by position."""

    @ray.remote(num_cpus=0)
    class CountSink:
        def __init__(self) -> None:
            self.totals: dict[int, Counter[str]] = {}

        def add(self, position: int, delta: dict[str, int]) -> None:
            self.totals.setdefault(position, Counter()).update(delta)

        def totals_by_stage(self) -> dict[int, dict[str, int]]:
            return {position: dict(total) for position, total in self.totals.items()}

    return CountSink.remote()  # type: ignore[attr-defined]


def _apply(stage: Step, table: pa.Table, sink: Any, position: int) -> pa.Table:
    """Run ``stage`` on a block and report what it added to its ``counts`` to ``sink``."""
    counts = getattr(stage, "counts", None)
    if not isinstance(counts, Counter):
        return _to_table(stage(_to_samples(table)))
    before = Counter(counts)
    output = _to_table(stage(_to_samples(table)))  # the stage adds to ``counts`` in place
    # keys with a zero count stay (a local run shows them too)
    delta = {key: value - before.get(key, 0) for key, value in counts.items()}
    if delta:
        import ray

        # waited for, so every delta has arrived before the driver sees this block's rows
        ray.get(sink.add.remote(position, delta))
    return output


class _StageTask:
    """A callable class around one stage: Ray builds one per actor, ``setup()`` runs once."""

    def __init__(self, stage: Step, sink: Any, position: int) -> None:
        self.stage, self.sink, self.position = stage, sink, position
        self.stage.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        return _apply(self.stage, table, self.sink, self.position)


def _run_cpu_stage(table: pa.Table, stage: Step, sink: Any, position: int) -> pa.Table:
    # A stateless CPU stage: setup() is cheap by contract (no model), so run it per block.
    stage.setup()
    return _apply(stage, table, sink, position)


def run_stages_ray(
    stages: Sequence[Step],
    samples: Iterable[Sample],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    parallelism: int | None = None,
) -> list[Sample]:
    """Run ``stages`` over ``samples`` on Ray and return the samples in input order."""
    ray = init_ray(address, num_cpus=num_cpus)
    dataset = _dataset(ray, samples, parallelism)
    if dataset is None:
        return []
    sink = _count_sink(ray)
    dataset = _through_stages(ray, dataset, stages, sink)
    rows: list[dict[str, Any]] = []
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        rows.extend(batch.to_pylist())
    _add_counts(ray, sink, stages)
    return [Sample.from_row(row) for row in rows]


def run_stages_ray_on_files(
    stages: Sequence[Step],
    inputs: Sequence[str],
    *,
    output_dir: str,
    prefix: str,
    address: str | None = None,
    num_cpus: int | None = None,
) -> list[str]:
    """Run ``stages`` over the samples of the Parquet files ``inputs``; return the names of the
    files written in ``output_dir`` (``<prefix>-<task>-<write id>-<part>.parquet``), in input
    order.

    The workers read the input files and write the output files themselves: no sample passes
    through the driver, which holds the stages' counters only. Every node must see ``inputs``
    and ``output_dir`` at the same paths (a shared file system).
    """
    ray = init_ray(address, num_cpus=num_cpus)
    if not inputs:
        return []
    sink = _count_sink(ray)
    # one block per file, read by a task in input order (Ray's own Parquet reader may list the
    # files in another order)
    files = ray.data.from_items(
        [{"file": path} for path in inputs], override_num_blocks=len(inputs)
    )
    dataset = files.map_batches(_read_sample_files, batch_size=1, batch_format="pyarrow")
    # one CPU stays free for the tasks that read and write the files: a model stage holding
    # every CPU of a small cluster would leave them waiting forever
    dataset = _through_stages(ray, dataset, stages, sink, spare_cpus=1.0)
    # files of at most a shard's rows, as this process's writer makes: Ray would otherwise
    # write a whole stage as one file, which every later reader must hold at once
    dataset.write_parquet(
        output_dir, filename_provider=_shard_names(prefix), max_rows_per_file=DEFAULT_SHARD_SIZE
    )
    _add_counts(ray, sink, stages)
    written = [path.name for path in Path(output_dir).glob(f"{prefix}-*.parquet")]
    return sorted(written, key=lambda name: _task_and_part(name, prefix))


def _read_sample_files(batch: pa.Table) -> pa.Table:
    """The samples of the Parquet files named in ``batch``'s ``file`` column, in order."""
    tables = [
        pq.read_table(path, schema=SAMPLE_SCHEMA) for path in batch.column("file").to_pylist()
    ]
    return pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table()


def files_fit_cluster(stages: Sequence[Step], address: str | None = None) -> bool:
    """Whether the cluster holds every model stage's actors and still has a CPU for the tasks
    that read and write files (`run_stages_ray_on_files`); on a smaller one those tasks would
    wait forever for a CPU, so the samples must pass through the driver (`run_stages_ray`)."""
    ray = init_ray(address)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    held = sum(
        _fit_to_cluster(ray, stage, spare_cpus=1.0).cpus * stage.resources.concurrency
        for stage in stages
        if stage.resources.uses_model
    )
    return held + 1.0 <= cpus


def _shard_names(prefix: str) -> Any:
    """Ray's namer of a write's files: ``<prefix>-<task index>-<write id>`` (tasks follow the
    input order, which the runner preserves; Ray adds ``-<part>.parquet``)."""
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"{prefix}-{task_index:06d}-{write_uuid}"

    return ShardNames(file_format="parquet")


def _task_and_part(name: str, prefix: str) -> tuple[int, int]:
    """The write task and the part of a file named by `_shard_names`, for ordering."""
    fields = name.removeprefix(f"{prefix}-").removesuffix(".parquet").split("-")
    return int(fields[0]), int(fields[-1])


def _add_counts(ray: Any, sink: Any, stages: Sequence[Step]) -> None:
    """Add what the workers counted to the driver's stage objects; stop the sink."""
    for position, delta in ray.get(sink.totals_by_stage.remote()).items():
        stages[position].counts.update(delta)
    ray.kill(sink)


def _through_stages(
    ray: Any, dataset: Any, stages: Sequence[Step], sink: Any, *, spare_cpus: float = 0.0
) -> Any:
    """``dataset`` mapped through each stage: CPU stages as functions, model stages as actors
    (asking for at most the cluster's CPUs less ``spare_cpus``)."""
    for position, stage in enumerate(stages):
        resources = _fit_to_cluster(ray, stage, spare_cpus=spare_cpus)
        if resources.uses_model:
            dataset = dataset.map_batches(
                _StageTask,
                fn_constructor_kwargs={"stage": stage, "sink": sink, "position": position},
                batch_format="pyarrow",
                batch_size=resources.batch_size,
                num_cpus=resources.cpus,
                num_gpus=resources.gpus or None,
                compute=_actor_pool(ray, resources, spare_cpus=spare_cpus),
            )
        else:
            dataset = dataset.map_batches(
                _run_cpu_stage,
                fn_kwargs={"stage": stage, "sink": sink, "position": position},
                batch_format="pyarrow",
                batch_size=resources.batch_size,
                num_cpus=resources.cpus,
            )
    return dataset


def _fit_to_cluster(ray: Any, stage: Step, *, spare_cpus: float = 0.0) -> Resources:
    """``stage.resources`` with its CPU request capped at the largest node's CPUs less
    ``spare_cpus`` (at most half of them): a request no node can meet would wait forever (a
    2-CPU machine and a scorer asking for 1 + 2 decode workers). A GPU request no node can meet
    is an error."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    wanted = stage.resources
    if wanted.gpus > most_gpus:
        raise ConfigError(
            f"stage '{stage.name}' asks for {wanted.gpus:g} GPU per worker but no node of the Ray "
            f"cluster has {'that many' if most_gpus else 'a GPU'}",
            fix="add GPU nodes to the cluster, or run the stage on CPU (e.g. --clip-device cpu)",
        )
    usable = max(most_cpus - spare_cpus, most_cpus / 2)
    if 0 < usable < wanted.cpus:
        return dataclasses.replace(wanted, cpus=usable)
    return wanted


def _actor_pool(ray: Any, resources: Resources, *, spare_cpus: float = 0.0) -> Any:
    """``concurrency`` actors, or for a CPU-only model stage as many as the cluster's CPUs hold.

    A GPU stage's ``concurrency`` is exact (one model per GPU share); a CPU model stage such
    as the spaCy-based grounding may grow up to the CPUs Ray has, so it scales with the cluster.
    """
    if resources.gpus:
        return ray.data.ActorPoolStrategy(size=resources.concurrency)
    usable = ray.cluster_resources().get("CPU", 1) - spare_cpus
    cpus = int(usable // max(resources.cpus, 0.01))
    return ray.data.ActorPoolStrategy(
        min_size=resources.concurrency, max_size=max(resources.concurrency, cpus)
    )


def _dataset(ray: Any, samples: Iterable[Sample], parallelism: int | None) -> Any:
    """A Ray dataset of ``samples`` in ``parallelism`` blocks (default: one per CPU)."""
    table = _to_table(list(samples))
    if table.num_rows == 0:
        return None
    blocks = parallelism or max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = -(-table.num_rows // blocks)
    return ray.data.from_arrow(
        [table.slice(start, size) for start in range(0, table.num_rows, size)]
    )


class RayRunner:
    """The `Runner` on a Ray cluster.

    When the run directory is on a file system the workers share and the cluster has room for
    the read and write tasks (`files_fit_cluster`), the workers read the input shards and write
    the output shards themselves and the writer adopts them; otherwise (a run on object
    storage, a cluster too small) the samples pass through this process. Workers run each
    step's ``worker_copy(share_journal)`` when it has one (a model not loaded yet, a journal
    served from this node to every worker), and their counts are added to the steps given.
    """

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        init_ray(settings.address)  # before any work: a wrong address fails now

    def map_stage(
        self,
        steps: Sequence[Step],
        run: RunDir,
        source: str,
        writer: StageWriter,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        address = self.settings.address
        servers: list[Any] = []
        remote = [_worker_copy(step, run, address, servers) for step in steps]
        try:
            if not is_url(run.location) and files_fit_cluster(steps, address):
                manifest = run.check_current(source)
                folder = run.stage_dir(source).absolute()
                written = run_stages_ray_on_files(
                    remote,
                    [str(folder / shard["file"]) for shard in manifest.shards],
                    output_dir=str(writer.directory.absolute()),
                    prefix=f"shard-{writer.token}",
                    address=address,
                )
                for name in written:
                    writer.adopt(name)
            else:
                samples = list(run.read_samples(source))
                for sample in run_stages_ray(remote, samples, address=address):
                    writer.add_rows([sample.to_row()])
        finally:
            for server in servers:
                server.stop_server()
        for step, used in zip(steps, remote, strict=True):
            if used is not step:  # the workers' counts were summed into the copy they used
                step.counts.update(used.counts)

    def fold(self, feed: FeedT, run: RunDir, stage: str) -> None:
        """One task per shard: the worker reads the shard itself (the run on a file system the
        workers share) or is given it by this process (a run on object storage), updates a
        copy of the unfed ``feed`` and returns it; the copies are merged into ``feed`` in shard
        order, with at most two per CPU of the cluster waiting."""
        ray = init_ray(self.settings.address)
        fold = ray.remote(num_cpus=1)(_fold_shard)
        unfed = ray.put(feed)  # an IndicatorFeed is pickled without its embedder
        work: Iterable[str | list[Sample]]  # shard file names, or the shards themselves
        if is_url(run.location):
            work = run.read_sample_shards(stage)
        else:
            work = [shard["file"] for shard in run.check_current(stage).shards]
        root = str(run.root.absolute())
        waiting: deque[Any] = deque()
        most = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        for index, shard in enumerate(work):
            waiting.append(fold.remote(unfed, root, stage, shard, index))
            if len(waiting) >= most:
                feed.merge(ray.get(waiting.popleft()))
        while waiting:
            feed.merge(ray.get(waiting.popleft()))

    def describe(self) -> dict[str, Any] | None:
        return {"kind": "ray", "address": self.settings.address or "local"}


def _worker_copy(step: Step, run: RunDir, address: str | None, servers: list[Any]) -> Step:
    """The copy of ``step`` the workers run; a journal it shares is served from this node."""
    copy_for_workers = getattr(step, "worker_copy", None)
    if copy_for_workers is None:
        return step

    def share_journal(path: Path) -> Any:
        from vlit.runners.ray_journal import JournalClient, start_journal_server

        client = JournalClient(start_journal_server(path, address=address))
        servers.append(client)
        return client

    return copy_for_workers(share_journal)


def _fold_shard(feed: FeedT, root: str, stage: str, shard: str | list[Sample], index: int) -> FeedT:
    """``feed`` (this task's own copy) updated with ``shard``, the stage's shard ``index``: the
    samples, or the name of the stage's shard file in the run at ``root``, read here."""
    if isinstance(shard, str):
        shard = RunDir(root).read_sample_shard(stage, shard)
    feed.update_shard(shard, index)
    return feed
