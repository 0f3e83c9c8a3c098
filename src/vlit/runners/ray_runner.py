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

import contextlib
import dataclasses
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from vlit.errors import ConfigError, InputFileError, VlitError
from vlit.images import is_url
from vlit.rundir import DEFAULT_SHARD_SIZE, RunDir, StageWriter, read_sample_file
from vlit.runners.base import Feed, Resources, RunnerSettings, Step
from vlit.schema import SAMPLE_SCHEMA, Sample
from vlit.storage import arrow_filesystem, file_names

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
    through the driver, which holds the stages' counters only. Paths and ``output_dir`` are
    local paths every node sees (a shared file system) or fsspec URLs (object storage). The
    reading and writing tasks ask for no CPU, so model stages may hold every CPU of the
    cluster; at most one reading task per CPU runs at a time.
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
    dataset = files.map_batches(
        _read_sample_files,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0,
        concurrency=max(1, int(ray.cluster_resources().get("CPU", 1))),
    )
    dataset = _through_stages(ray, dataset, stages, sink)
    filesystem, folder = arrow_filesystem(output_dir)
    with _storage_errors(output_dir):
        # files of at most a shard's rows, as this process's writer makes: Ray would otherwise
        # write a whole stage as one file, which every later reader must hold at once
        dataset.write_parquet(
            folder,
            filesystem=filesystem,
            filename_provider=_shard_names(prefix),
            max_rows_per_file=DEFAULT_SHARD_SIZE,
            ray_remote_args={"num_cpus": 0},
        )
        listed = file_names(output_dir)
    _add_counts(ray, sink, stages)
    written = [name for name in listed if name.startswith(f"{prefix}-")]
    return sorted(written, key=lambda name: _task_and_part(name, prefix))


def _read_sample_files(batch: pa.Table) -> pa.Table:
    """The samples of the Parquet files (paths or URLs) named in ``batch``'s ``file`` column,
    in order."""
    tables = []
    for location in batch.column("file").to_pylist():
        filesystem, path = arrow_filesystem(location)
        with _storage_errors(location):
            tables.append(pq.read_table(path, schema=SAMPLE_SCHEMA, filesystem=filesystem))
    return pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table()


@contextlib.contextmanager
def _storage_errors(location: str) -> Iterator[None]:
    """Any failure to read or write ``location`` on a worker (credentials, endpoint, a damaged
    file) as an `InputFileError` naming it; vlit's own errors pass as they are."""
    try:
        yield
    except VlitError:
        raise
    except Exception as error:  # noqa: BLE001 - any file system backend's errors
        raise InputFileError(
            f"a Ray worker cannot use the run's file ({type(error).__name__}: {error})",
            file=location,
            fix="give every node of the cluster the run directory: a shared file system, or "
            "the object store's endpoint and credentials (for S3: the AWS_* variables); a "
            "damaged shard: rerun the command that wrote its stage",
        ) from error


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


def _through_stages(ray: Any, dataset: Any, stages: Sequence[Step], sink: Any) -> Any:
    """``dataset`` mapped through each stage: CPU stages as functions, model stages as actors
    (asking for at most the cluster's CPUs)."""
    for position, stage in enumerate(stages):
        resources = _fit_to_cluster(ray, stage)
        if resources.uses_model:
            dataset = dataset.map_batches(
                _StageTask,
                fn_constructor_kwargs={"stage": stage, "sink": sink, "position": position},
                batch_format="pyarrow",
                batch_size=resources.batch_size,
                num_cpus=resources.cpus,
                num_gpus=resources.gpus or None,
                compute=_actor_pool(ray, resources),
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


def _fit_to_cluster(ray: Any, stage: Step) -> Resources:
    """``stage.resources`` with its CPU request capped at the largest node's CPUs: a request no
    node can meet would wait forever (a 2-CPU machine and a scorer asking for 1 + 2 decode
    workers). A GPU request no node can meet is an error."""
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
    if 0 < most_cpus < wanted.cpus:
        return dataclasses.replace(wanted, cpus=most_cpus)
    return wanted


def _actor_pool(ray: Any, resources: Resources) -> Any:
    """``concurrency`` actors, or for a CPU-only model stage as many as the cluster's CPUs hold.

    A GPU stage's ``concurrency`` is exact (one model per GPU share); a CPU model stage such
    as the spaCy-based grounding may grow up to the CPUs Ray has, so it scales with the cluster.
    """
    if resources.gpus:
        return ray.data.ActorPoolStrategy(size=resources.concurrency)
    usable = ray.cluster_resources().get("CPU", 1)
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

    The workers read the input shards and write the output shards themselves, on a file system
    they share or on the run's object storage (a staged run is pushed first, and the shards the
    workers wrote are then fetched into its staged copy as files); the driver holds manifests
    and counters. Workers run each step's ``worker_copy(share_journal)`` when it has one (a
    model not loaded yet, a journal served from this node to every worker), and their counts
    are added to the steps given.
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
        servers: list[Any] = []
        remote = [_worker_copy(step, run, self.settings.address, servers) for step in steps]
        try:
            written = run_stages_ray_on_files(
                remote,
                _shard_locations(run, source),
                output_dir=_shared_location(run, writer.stage),
                prefix=f"shard-{writer.token}",
                address=self.settings.address,
            )
        finally:
            for server in servers:
                server.stop_server()
        run.fetch([f"{writer.stage}/{name}" for name in written])
        for name in written:
            writer.adopt(name)
        for step, used in zip(steps, remote, strict=True):
            if used is not step:  # the workers' counts were summed into the copy they used
                step.counts.update(used.counts)

    def fold(self, feed: FeedT, run: RunDir, stage: str) -> None:
        """One task per shard: the worker reads the shard itself, updates a copy of the unfed
        ``feed`` and returns it; the copies are merged into ``feed`` in shard order, with at
        most two per CPU of the cluster waiting."""
        ray = init_ray(self.settings.address)
        fold = ray.remote(num_cpus=1)(_fold_shard)
        unfed = ray.put(feed)  # an IndicatorFeed is pickled without its embedder
        waiting: deque[Any] = deque()
        most = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        for index, location in enumerate(_shard_locations(run, stage)):
            waiting.append(fold.remote(unfed, location, stage, index))
            if len(waiting) >= most:
                feed.merge(ray.get(waiting.popleft()))
        while waiting:
            feed.merge(ray.get(waiting.popleft()))

    def describe(self) -> dict[str, Any] | None:
        return {"kind": "ray", "address": self.settings.address or "local"}


def _shard_locations(run: RunDir, stage: str) -> list[str]:
    """Where the workers read the shards of ``stage`` (checked current): a staged run is pushed
    first, so its URL holds them."""
    shards = run.check_current(stage).shards
    run.push()
    return [_shared_location(run, f"{stage}/{shard['file']}") for shard in shards]


def _shared_location(run: RunDir, name: str) -> str:
    """The run's file ``name`` as every worker reaches it: its URL, or its absolute path."""
    if is_url(run.location):
        return run.location_of(name)
    return str((run.root / name).absolute())


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


def _fold_shard(feed: FeedT, location: str, stage: str, index: int) -> FeedT:
    """``feed`` (this task's own copy) updated with shard ``index`` of ``stage``, the shard file
    at ``location`` (a path or a URL), read here."""
    filesystem, path = arrow_filesystem(location)
    with _storage_errors(location):
        shard = read_sample_file(path, stage, filesystem=filesystem)
    feed.update_shard(shard, index)
    return feed
