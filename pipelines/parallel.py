"""Local parallel execution of one micro-batch: the same transforms as the single Beam job
(`job.py`), run by K worker processes so that both cores of a laptop or CI machine work.

Beam's local FnApiRunner runs a job in one process (with more workers it silently drops a
Splittable DoFn's deferred work, see docs/performance.md), so on the local runner one
micro-batch is split like a distributed runner would split it, with a file shuffle in between:

1. **decode** (K jobs in parallel, disjoint sets of offset ranges): Kafka read, decode and
   validate; dead letters to the dead-letter topic; events bucketed by a stable hash of their
   event id and spooled to files, one directory per bucket.
2. **process** (K jobs in parallel, disjoint sets of buckets): every copy of an event id is in
   one bucket, so de-duplication is exact (within the batch, and against the warehouse's
   ledger, read through a read-only connection); erased customers are dropped; KPI
   components, touchpoint facts, identity links and ledger rows are spooled.
3. **write** (this process): identity stitching (it needs the whole batch's links and the
   stored graph), then every row and the batch ledger in ONE transaction, exactly as the
   single job's writer does. KPI components of different buckets with the same key are added
   up by the warehouse's combine step, as they are for the buckets of the single job.

Nothing here holds on Dataflow or Flink: they run ``job.build_pipeline`` as one job and do
their own shuffles. The spool is a temporary directory removed after the batch; a batch that
fails anywhere stays 'pending' and is re-run from Kafka. A process killed with SIGKILL cannot
remove its spool: its name carries the host and PID, and the next run on that host removes
the spools of processes that are gone (:func:`remove_orphaned_spools`).
"""
from __future__ import annotations

import atexit
import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import shutil
import socket
import tempfile
import time
import uuid
from collections import defaultdict
from typing import Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from cx360.pipelines.job import (TABLES_WRITTEN, ComputeKpisFn, JobSettings, local_options)
from cx360.pipelines.logs import configure, current_settings
from cx360.transforms.dead_letters import ProduceDeadLettersFn
from cx360.transforms.decode import DEAD_LETTER, DecodeEvents
from cx360.transforms.dedupe import EVENT_ID_ROWS, DeduplicateFn
from cx360.transforms.identity import (WarehouseGraphStore, event_links,
                                       redact_dead_letter, stitch)
from cx360.transforms.identity_steps import DropErasedFn, rules_from_env
from cx360.transforms.kafka_io import PartitionRange
from cx360.transforms.kafka_source import ReadFromKafkaRanges
from cx360.transforms.warehouse import TABLES, is_duckdb_url, open_warehouse
from cx360.transforms.warehouse.sink import write_rows
from cx360.transforms.warehouse.spec import BRANDS, DEAD_LETTERS, EVENT_IDS

LINKS = "_identity_links_in"   # spool key of the identity links (input of stitching)
DEAD = "_dead_letters"         # spool key of the (redacted) dead-letter rows

#: Tables keyed by the event id alone (ledger, touchpoints, web events, brand replies): every
#: copy of an event id is in one bucket, so their rows from different buckets never share a
#: key. With a DuckDB warehouse the process jobs spool them as Arrow tables, built in the
#: worker processes (in parallel) instead of by the driver's serial write, which registers
#: them with DuckDB as they are. These are ~60 % of a batch's rows.
ARROW_TABLES = frozenset(name for name in TABLES_WRITTEN
                         if TABLES[name].key == ("event_id",) and TABLES[name].merge != "add")


# -- spool -----------------------------------------------------------------------------------

SPOOL_PREFIX = "cx360-spool-"


def _host_tag() -> str:
    """The host part of a spool name: no '-' (the name's separator) and no path characters."""
    return "".join(c for c in socket.gethostname() if c.isalnum())[:32] or "host"


def spool_dir() -> str:
    """Where spools are created: ``$CX360_SPOOL_DIR`` or the system temporary directory."""
    return os.environ.get("CX360_SPOOL_DIR") or tempfile.gettempdir()


def new_spool(batch_id: str) -> str:
    """A fresh spool directory for ``batch_id``, named after this host and process."""
    return tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{_host_tag()}-{os.getpid()}-{batch_id}-",
                            dir=spool_dir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's live process
        return True
    return True


def remove_orphaned_spools(folder: str | None = None) -> list[str]:
    """Remove the spools that processes of this host left behind when they were killed
    (SIGKILL, OOM): those whose PID no longer runs. Spools of live processes, of other hosts
    sharing the folder, and anything not named like a spool stay. Returns the removed paths."""
    folder = folder or spool_dir()
    host = _host_tag()
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        parts = name[len(SPOOL_PREFIX):].split("-", 2) if name.startswith(SPOOL_PREFIX) else []
        if len(parts) < 3 or parts[0] != host or not parts[1].isdigit():
            continue
        path = os.path.join(folder, name)
        if not _alive(int(parts[1])) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class SpoolWriteFn(beam.DoFn):
    """``(key, value)`` in; per bundle, one file per key holding the list of its values
    (``<spool>/<key>/<prefix>-<uuid>.pkl``). Written in finish_bundle, to a temporary name
    renamed when complete, so a reader never sees half a file."""

    def __init__(self, spool: str, prefix: str, arrow_tables: Iterable[str] = ()):
        self.spool = spool
        self.prefix = prefix
        self.arrow_tables = frozenset(arrow_tables)   # ``table-<name>`` keys spooled as Arrow
        self._pending: dict = {}

    def start_bundle(self):
        self._pending = defaultdict(list)

    def process(self, element) -> Iterator[None]:
        key, value = element
        self._pending[key].append(value)
        return iter(())

    def finish_bundle(self):
        for key, values in self._pending.items():
            table = str(key)[len("table-"):] if str(key).startswith("table-") else None
            spec = TABLES.get(table) if table else None
            folder = os.path.join(self.spool, str(key))
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{self.prefix}-{uuid.uuid4().hex}")
            if spec is not None and table in self.arrow_tables:
                _write_arrow(path + ".arrow", spec,
                             spec.combine([row for rows in values for row in rows]))
                continue
            if spec is not None and spec.merge == "add":
                # KPI components: add up this bundle's rows per key already (the writer
                # would), so fewer rows travel and wait in the writer's memory.
                values = [spec.combine([row for rows in values for row in rows])]
            with open(path + ".pkl.tmp", "wb") as out:
                pickle.dump(values, out, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(path + ".pkl.tmp", path + ".pkl")
        self._pending = {}


def _write_arrow(path: str, spec, rows: list[dict]) -> None:
    """``rows`` as an Arrow IPC file of ``spec``'s columns (temporary name, then renamed)."""
    import pyarrow as pa

    from cx360.transforms.warehouse.duckdb_backend import arrow_table

    table = arrow_table(spec, rows)
    with pa.OSFile(path + ".tmp", "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    os.replace(path + ".tmp", path)


def read_arrow_spool(spool: str, key):
    """The Arrow tables spooled under ``key``, concatenated (None if there are none)."""
    import pyarrow as pa

    folder = os.path.join(spool, str(key))
    if not os.path.isdir(folder):
        return None
    tables = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".arrow"):
            with pa.OSFile(os.path.join(folder, name), "rb") as src:
                tables.append(pa.ipc.open_file(src).read_all())
    return pa.concat_tables(tables) if tables else None


def read_spool(spool: str, key) -> list:
    """Every value spooled under ``key`` (in file-name order: deterministic)."""
    folder = os.path.join(spool, str(key))
    if not os.path.isdir(folder):
        return []
    values = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pkl"):
            with open(os.path.join(folder, name), "rb") as src:
                values.extend(pickle.load(src))
    return values


class ReadBucketFn(beam.DoFn):
    """A bucket number -> ``(bucket, packed event lists)`` as the GroupByKey of the single job
    would give it to :class:`DeduplicateFn`."""

    def __init__(self, spool: str):
        self.spool = spool

    def process(self, bucket: int):
        blobs = read_spool(self.spool, f"bucket-{bucket}")
        if blobs:
            yield bucket, blobs


class ReadOnlyLedgerDeduplicateFn(DeduplicateFn):
    """:class:`DeduplicateFn` on a read-only connection: K processes look the ledger up at
    once (DuckDB allows many read-only processes, or one writer), and nothing writes while
    they do (the batch is written after all of them finished)."""

    def setup(self):
        self._warehouse = open_warehouse(self.warehouse_url, read_only=True)


class DropGivenErasedFn(DropErasedFn):
    """:class:`DropErasedFn` with the erasure list read by the driver before the batch (the
    same state the single job's DoFn reads in setup), so no worker opens the warehouse."""

    def __init__(self, erased: Iterable[str]):
        super().__init__("")
        self.erased = frozenset(erased)

    def setup(self):
        self._warehouse = None
        self._erased = set(self.erased)
        self._dropped = Metrics.counter("cx360.identity", "erased_events_dropped")


# -- the two worker jobs ----------------------------------------------------------------------

def _metrics(result, cpu_started: float, wall_started: float
             ) -> tuple[dict, dict, float, float]:
    """(counters, event-time maxima, CPU seconds this job used in this process, its wall
    seconds)."""
    from cx360.pipelines.microbatch import _counters, _distribution_max

    return (dict(_counters(result)), _distribution_max(result, "cx360.dedupe/event_time_ms:"),
            time.process_time() - cpu_started, time.monotonic() - wall_started)


def _profiled(fn):
    """Development aid: with CX360_PROFILE_DIR set, each worker job dumps a cProfile file."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        folder = os.environ.get("CX360_PROFILE_DIR")
        if not folder:
            return fn(*args, **kwargs)
        import cProfile

        profile = cProfile.Profile()
        try:
            return profile.runcall(fn, *args, **kwargs)
        finally:
            profile.dump_stats(os.path.join(folder, f"{fn.__name__}-{os.getpid()}-"
                                                    f"{time.monotonic_ns()}.prof"))
    return wrapper


@_profiled
def decode_job(settings: JobSettings, ranges: Sequence[PartitionRange], spool: str, part: int,
               runner: str, beam_args: Sequence[str]) -> tuple[dict, dict]:
    """Phase 1 in a worker process: read + decode ``ranges``; events to bucket folders, dead
    letters to Kafka and to the spool. Returns (counters, distribution maxima)."""
    s = settings
    cpu_started, wall_started = time.process_time(), time.monotonic()
    pipeline = beam.Pipeline(options=local_options(runner, beam_args))
    batches = pipeline | "ReadKafka" >> ReadFromKafkaRanges(
        s.kafka, list(ranges), batch_size=s.read_batch_size, stall_timeout_s=s.stall_timeout_s)
    decoded = batches | "Decode" >> DecodeEvents(
        s.registry, s.topics, s.now_ms, buckets=s.buckets, batch_id=s.batch_id,
        max_future_ms=s.max_future_ms)
    _ = (decoded.events
         | "BucketKeys" >> beam.Map(lambda kv: (f"bucket-{kv[0]}", kv[1]))
         | "SpoolEvents" >> beam.ParDo(SpoolWriteFn(spool, f"p{part}")))
    _ = (decoded[DEAD_LETTER]
         | "DeadLetterRows" >> beam.Map(lambda dead: (DEAD, redact_dead_letter(dead)))
         | "SpoolDeadLetters" >> beam.ParDo(SpoolWriteFn(spool, f"p{part}")))
    dl_topic = s.topics.get("dead_letter")
    if dl_topic:
        _ = decoded[DEAD_LETTER] | "DeadLettersToKafka" >> beam.ParDo(
            ProduceDeadLettersFn(s.kafka, dl_topic, s.registry))
    result = pipeline.run()
    result.wait_until_finish()
    return _metrics(result, cpu_started, wall_started)


@_profiled
def process_job(settings: JobSettings, buckets: Sequence[int], spool: str, part: int,
                erased: frozenset, runner: str, beam_args: Sequence[str],
                arrow_tables: frozenset = frozenset()) -> tuple[dict, dict]:
    """Phase 2 in a worker process: de-duplicate, drop erased, compute the KPI components,
    touchpoints, identity links and ledger rows of ``buckets``; all spooled as table parts
    (``arrow_tables`` as Arrow tables, see :data:`ARROW_TABLES`)."""
    s = settings
    cpu_started, wall_started = time.process_time(), time.monotonic()
    pipeline = beam.Pipeline(options=local_options(runner, beam_args))
    grouped = (pipeline
               | "Buckets" >> beam.Create(list(buckets))
               | "ReadBuckets" >> beam.ParDo(ReadBucketFn(spool)))
    deduped = grouped | "Deduplicate" >> beam.ParDo(
        ReadOnlyLedgerDeduplicateFn(s.warehouse_url)).with_outputs(EVENT_ID_ROWS, main="events")
    kept = deduped.events | "DropErased" >> beam.ParDo(DropGivenErasedFn(erased))
    out = SpoolWriteFn(spool, f"q{part}", arrow_tables)
    _ = (kept | "ComputeKpis" >> beam.ParDo(ComputeKpisFn(s.window_sizes, s.sliding))
         | "TableKeys" >> beam.Map(lambda kv: (f"table-{kv[0]}", kv[1]))
         | "SpoolKpis" >> beam.ParDo(out))
    _ = (kept | "Links" >> beam.Map(lambda evs: (LINKS, [l for e in evs for l in event_links(e)]))
         | "SpoolLinks" >> beam.ParDo(SpoolWriteFn(spool, f"q{part}")))
    _ = (deduped[EVENT_ID_ROWS]
         | "EventIdRows" >> beam.Map(lambda rows: (f"table-{EVENT_IDS.name}", rows))
         | "SpoolEventIds" >> beam.ParDo(SpoolWriteFn(spool, f"q{part}", arrow_tables)))
    result = pipeline.run()
    result.wait_until_finish()
    return _metrics(result, cpu_started, wall_started)


# -- the driver -------------------------------------------------------------------------------

_POOL: dict = {}
_WARM: set = set()   # pools whose workers have run a job (imports done)
_WARMING: dict = {}  # pool -> futures of its warm-up jobs


def _warm_up() -> None:
    """In a worker process, before its first job: the imports of the jobs (Beam, ~3 s) and
    the sentiment lexicons (~2 s) that its first process job would load."""
    from cx360.pipelines.job import shared_scorer
    from cx360.transforms.sentiment import _langid

    shared_scorer()
    _langid()


def start_workers(processes: int) -> None:
    """Start the worker processes of a parallel run of ``processes`` and let them import and
    load the lexicons while this process plans its batches and loads its own lexicons (the
    lexicons are process-wide: the first process phase then starts balanced; the workers'
    imports are what the bigger share of this process in the first decode phase makes up)."""
    pool = worker_pool(processes - 1)
    if pool not in _WARM and pool not in _WARMING:
        _WARMING[pool] = [pool.submit(_warm_up) for _ in range(processes - 1)]
    _warm_up()


def worker_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """``workers`` worker processes, started once and reused by every batch of this process
    (their imports, Kafka clients and sentiment lexicons are paid once). 'spawn', not fork:
    the parent may hold gRPC threads and database connections."""
    pool = _POOL.get(workers)
    if pool is None:
        pool = _POOL[workers] = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(os.getpid(), current_settings()))
        atexit.register(pool.shutdown, wait=True, cancel_futures=True)
    return pool


#: Garbage-collector thresholds while a parallel run works: a batch allocates millions of
#: small dicts and lists that are not cycles, and with Python's default (700, 10, 10) the
#: cyclic collector ran ~5,000 times per 200k events, 6-7 % of the run's CPU (measured with
#: gc.callbacks: 4.3 s of 66 s); with these thresholds ~60 times (~1 s). Reference counting
#: still frees everything that is not a cycle at once, so memory stays the same.
GC_THRESHOLDS = (50_000, 50, 1_000)


def _start_worker(parent: int, log_settings: tuple[str, bool]) -> None:
    """In a worker: exit when the parent process is gone (killed with SIGKILL, it cannot shut
    the pool down, and an idle worker would wait for work forever). Also sets the worker's
    garbage-collector thresholds (:data:`GC_THRESHOLDS`) and logs like the parent (a spawned
    process starts with Python's default logging). Configuration warnings such as the demo
    pseudonym key are the parent's to give, once per run, not once per worker."""
    import threading

    from cx360.transforms import identity

    configure(*log_settings)
    identity.demo_key_warned = True
    gc.set_threshold(*GC_THRESHOLDS)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="cx360-parent-watch", daemon=True).start()


def split_ranges(ranges: Sequence[PartitionRange], shares: Sequence[float]
                 ) -> list[list[PartitionRange]]:
    """Cut ``ranges`` into len(shares) groups holding about those fractions of the offsets
    (a range is cut at an offset where a group is full). Every offset lands in exactly one
    group."""
    total = sum(r.stop - r.start for r in ranges)
    targets = [total * share / sum(shares) for share in shares]
    groups: list[list[PartitionRange]] = [[] for _ in shares]
    i, room = 0, targets[0]
    for r in sorted(ranges, key=lambda r: (r.topic, r.partition, r.start)):
        start = r.start
        while start < r.stop:
            if i < len(groups) - 1 and room < 1:
                i += 1
                room = targets[i]
                continue
            stop = r.stop if i == len(groups) - 1 else min(r.stop, start + max(1, round(room)))
            groups[i].append(PartitionRange(r.topic, r.partition, start, stop))
            room -= stop - start
            start = stop
    return groups


def _sum_into(total: dict, counters: dict) -> None:
    for name, value in counters.items():
        total[name] = total.get(name, 0) + value


def _max_into(total: dict, maxima: dict) -> None:
    for name, value in maxima.items():
        total[name] = max(total.get(name, value), value)


def _fold(results, counters: dict, maxima: dict) -> float:
    """Add the (counters, maxima, cpu_s, wall_s) results of one phase's jobs into the batch's
    counters and maxima; returns the phase's CPU seconds."""
    for c, m, *_ in results:
        _sum_into(counters, c)
        _max_into(maxima, m)
    return sum(r[2] for r in results)


class SpooledRows(Mapping):
    """``{table: rows}`` of a batch, loaded from the spool when a table is asked for and not
    kept: the writer holds one table's rows at a time, not the whole batch's. A table spooled
    as Arrow (:data:`ARROW_TABLES`, DuckDB only) comes as one ``pyarrow.Table``."""

    def __init__(self, spool: str, extra: dict[str, list[dict]]):
        self.spool = spool
        self.extra = extra

    def __getitem__(self, table: str):
        if table not in TABLES_WRITTEN:
            raise KeyError(table)
        arrow = read_arrow_spool(self.spool, f"table-{table}")
        if arrow is not None:
            if self.extra.get(table):
                raise ValueError(f"{table}: Arrow parts and row dicts cannot be mixed")
            return arrow
        rows = [row for part in read_spool(self.spool, f"table-{table}") for row in part]
        if table == DEAD_LETTERS.name:
            rows.extend(read_spool(self.spool, DEAD))
        rows.extend(self.extra.get(table, ()))
        return rows

    def __iter__(self):
        return iter(TABLES_WRITTEN)

    def __len__(self) -> int:
        return len(TABLES_WRITTEN)


class _Decoding:
    """A batch whose decode phase has started: its spool, this process's share of the ranges
    (run when the batch's turn comes) and the workers' jobs."""

    def __init__(self, spool: str, inline: list[PartitionRange], jobs: list):
        self.spool = spool
        self.inline = inline
        self.jobs = jobs


class ParallelBatches:
    """Runs recorded batches with this process and ``workers - 1`` worker processes.

    This process takes a share of each phase and does the write. While it writes batch n,
    the workers already decode batch n+1 (:meth:`run` with ``next_batch``): decoding needs
    nothing from the warehouse. De-duplication of batch n+1 starts only after batch n is
    written, so the ledger it reads is complete.
    """

    def __init__(self, config, workers: int):
        self.config = config
        self.workers = workers
        self.pool = worker_pool(workers - 1)
        remove_orphaned_spools()
        self._decoding: dict[str, _Decoding] = {}
        self._write_per_record = 0.0     # seconds, measured on the previous batch
        self._decode_per_record = 0.0    # CPU seconds of the decode phase per record
        # The BI snapshot (DuckDB) copies the whole warehouse (~3-4 s for 200k events): it is
        # published after a batch only if the last one is snapshot_every_s old, else once
        # when the run's last batch is written (or in close(), if a later batch failed).
        self._published_at = time.monotonic()
        self._snapshot_due = False
        self._gc_thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)

    def _settings(self, batch):
        from cx360.pipelines.microbatch import job_settings

        return job_settings(self.config, batch)

    def _args(self):
        return self.config.runner, tuple(self.config.beam_args)

    def start_decode(self, batch, writing: bool = False) -> None:
        """Hand the workers their share of ``batch``'s decode phase. ``writing``: this
        process will be busy writing the previous batch meanwhile, so the workers take more
        (enough to finish when this process has written and decoded the rest)."""
        if batch.batch_id in self._decoding:
            return
        spool = new_spool(batch.batch_id)
        k = self.workers
        mine = 1.0 / k
        warming = _WARMING.get(self.pool)
        if self.pool not in _WARM and not (warming and all(f.done() for f in warming)):
            # Fresh worker processes import Beam and cx360 first (~2-3 s): this process,
            # which already has, takes a bigger share of the first batch.
            mine = min(0.9, 1.2 / k)
        if writing and self._decode_per_record > 0:
            # Balance: this process writes (W) and decodes its share x of the decode work D
            # while each of the k-1 workers decodes y = (1-x)/(k-1):  W + x*D = y*D
            # => x = (1 - (k-1)*W/D) / k, from the previous batch's W and D per record.
            ratio = self._write_per_record / self._decode_per_record
            mine = min(1.0 / k, max(0.02, (1.0 - (k - 1) * ratio) / k))
        shares = [mine] + [(1.0 - mine) / (k - 1)] * (k - 1)
        groups = split_ranges(batch.ranges, shares)
        settings = self._settings(batch)
        jobs = [self.pool.submit(decode_job, settings, group, spool, i, *self._args())
                for i, group in enumerate(groups) if i > 0 and group]
        self._decoding[batch.batch_id] = _Decoding(spool, groups[0], jobs)

    def run(self, batch, next_batch=None) -> tuple[dict, dict, dict | None, dict]:
        """Run one recorded batch and write it. Returns (counters, event-time maxima, rows
        written per table or None when the batch was already applied, seconds per phase)."""
        settings = self._settings(batch)
        counters: dict = {}
        maxima: dict = {}
        timings: dict = {"processes": self.workers}
        wall, cpu = time.monotonic(), time.process_time()
        self.start_decode(batch)
        decoding = self._decoding[batch.batch_id]
        try:
            warehouse = open_warehouse(self.config.warehouse_url)
            try:
                erased = frozenset(WarehouseGraphStore(warehouse).erased())
            finally:
                warehouse.close()
            # 1. decode: this process's share, then the workers' (already running).
            results = []
            if decoding.inline:
                results.append(decode_job(settings, decoding.inline, decoding.spool, 0,
                                          *self._args()))
            results += [job.result() for job in decoding.jobs]
            timings["decode_cpu_s"] = _fold(results, counters, maxima)
            # (CPU s, wall s) of each job, this process's first: where the phase's time went.
            timings["decode_jobs"] = [(round(r[2], 2), round(r[3], 2)) for r in results]
            timings["decode_s"] = time.monotonic() - wall
            phase = time.monotonic()
            # 2. de-duplicate and compute, bucket sets split evenly.
            groups = [list(range(i, settings.buckets, self.workers))
                      for i in range(self.workers)]
            arrow = ARROW_TABLES if is_duckdb_url(self.config.warehouse_url) else frozenset()
            jobs = [self.pool.submit(process_job, settings, group, decoding.spool, i, erased,
                                     *self._args(), arrow)
                    for i, group in enumerate(groups) if i > 0 and group]
            results = [process_job(settings, groups[0], decoding.spool, 0, erased,
                                   *self._args(), arrow)]
            results += [job.result() for job in jobs]
            timings["process_cpu_s"] = _fold(results, counters, maxima)
            timings["process_jobs"] = [(round(r[2], 2), round(r[3], 2)) for r in results]
            timings["process_s"] = time.monotonic() - phase
            phase = time.monotonic()
            # 3. the workers start on the next batch while this process writes this one.
            if next_batch is not None:
                self.start_decode(next_batch, writing=True)
            written, rejected = self._write(batch, settings, decoding.spool,
                                            more=next_batch is not None)
            for table, count in rejected.items():
                counters[f"cx360.write/rows_rejected:{table}"] = count
            timings["write_s"] = time.monotonic() - phase
            timings["driver_cpu_s"] = time.process_time() - cpu
        finally:
            del self._decoding[batch.batch_id]
            shutil.rmtree(decoding.spool, ignore_errors=True)
        _WARM.add(self.pool)
        records = max(1, sum(r.stop - r.start for r in batch.ranges))
        self._write_per_record = timings["write_s"] / records
        self._decode_per_record = timings["decode_cpu_s"] / records
        return counters, maxima, written, {k: round(v, 3) if isinstance(v, float) else v
                                           for k, v in timings.items()}

    def _write(self, batch, settings, spool: str, more: bool = False
               ) -> tuple[dict | None, dict[str, int]]:
        """Identity stitching over the whole batch, then every row and the ledger in one
        transaction (``sink.write_rows``, as WriteBatchFn does for the single job). Returns
        (rows written per table or None if applied already, rows rejected per table).
        ``more``: another batch of this run follows (the BI snapshot may wait for it)."""
        links = [link for part in read_spool(spool, LINKS) for link in part]
        warehouse = open_warehouse(self.config.warehouse_url)
        try:
            store = WarehouseGraphStore(warehouse)
            identity = stitch(links, store, rules_from_env(), store.erased(), batch.batch_id,
                              batch.created_ms)
            del links
            extra = {name: list(rows) for name, rows in identity.items()}
            extra.setdefault(BRANDS.name, []).extend(settings.brands)
            return write_rows(warehouse, batch.batch_id, SpooledRows(spool, extra))
        finally:
            self._close_writer(warehouse, more)

    def _close_writer(self, warehouse, more: bool) -> None:
        every = getattr(warehouse, "snapshot_every_s", None)   # DuckDB's BI snapshot
        if every is None:
            warehouse.close()
        elif more and time.monotonic() - self._published_at < every:
            self._snapshot_due = self._snapshot_due or bool(getattr(warehouse, "_changed"))
            warehouse.close(publish=False)
        else:
            try:
                if getattr(warehouse, "_changed", False) or self._snapshot_due:
                    # Nothing else in this process writes while the driver writes a batch.
                    warehouse.publish_snapshot(exclusive=True)
            finally:
                warehouse.close(publish=False)
            self._published_at = time.monotonic()
            self._snapshot_due = False

    def _publish_due_snapshot(self) -> None:
        if self._snapshot_due:
            warehouse = open_warehouse(self.config.warehouse_url)
            try:
                warehouse.publish_snapshot(exclusive=True)
            finally:
                warehouse.close(publish=False)
            self._snapshot_due = False

    def close(self) -> None:
        """Wait for started decode jobs (a failed run leaves some) and remove their spools."""
        for decoding in self._decoding.values():
            for job in decoding.jobs:
                try:
                    job.result()
                except Exception:  # noqa: BLE001 - the batch stays pending and is re-run
                    pass
            shutil.rmtree(decoding.spool, ignore_errors=True)
        self._decoding.clear()
        try:
            self._publish_due_snapshot()
        finally:
            gc.set_threshold(*self._gc_thresholds)
