"""Pipeline health: what one batch did and where the pipeline stands, per topic-partition.

After every applied micro-batch the driver measures, per event topic-partition: the offsets
the batch read, how many became dead letters (by reason) and how many were accepted, the
position (end of the offsets the warehouse holds), the Fetch high watermark right after the
batch and so the consumer lag, the newest event time in the warehouse (event-time watermark
proxy) and its freshness, the batch duration and rate. The rows go to the ``pipeline_health``
table in a small transaction of their own, after the batch is applied and committed: health
rows are observations, not data, so they are never part of the batch transaction and a crash
between the two loses at most one health row (docs/operations.md).

``cx360 health`` (pipelines/health_cmd.py) evaluates the same measures live against
thresholds; :func:`evaluate` holds that logic so that it is testable without a process.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time

from cx360.transforms.warehouse.spec import PIPELINE_HEALTH

LOG = logging.getLogger(__name__)

OK, WARN, CRITICAL = 0, 1, 2
STATUS_NAMES = {OK: "OK", WARN: "WARN", CRITICAL: "CRITICAL"}


def event_topics(topics: dict[str, str]) -> list[str]:
    return [t for role, t in topics.items() if role != "dead_letter"]


def ledger_ends(warehouse) -> dict[tuple[str, int], int]:
    """End of the offsets the warehouse holds (applied or committed batches) per partition."""
    ends: dict[tuple[str, int], int] = {}
    for batch in warehouse.batches():
        if batch.status in ("applied", "committed"):
            for r in batch.ranges:
                tp = (r.topic, r.partition)
                ends[tp] = max(ends.get(tp, 0), r.stop)
    return ends


def newest_event_times(warehouse) -> dict[tuple[str, int], int]:
    """Newest event_time (epoch ms) per (topic, partition) in the de-duplication ledger."""
    try:
        part = warehouse.quote("partition")
        rows = warehouse.query(f"SELECT topic, {part}, max(event_time) FROM _cx360_event_ids "
                               f"GROUP BY topic, {part}")
    except Exception:  # no ledger yet: nothing processed
        return {}
    return {(r[0], int(r[1])): _epoch_ms(r[2]) for r in rows if r[2] is not None}


def streaming_progress(warehouse) -> tuple[dict[tuple[str, int], int],
                                           dict[tuple[str, int], int]]:
    """(position, newest record time in epoch ms) per (topic, partition) from the health rows
    of a streaming job (transforms/stream_health.py): a streaming deployment has no batch
    ledger and no de-duplication ledger in the warehouse, so `cx360 health` reads these."""
    part = warehouse.quote("partition")
    try:
        rows = warehouse.query(f"SELECT topic, {part}, max(position), max(max_event_time) "
                               "FROM pipeline_health WHERE batch_id LIKE 'stream:%' "
                               f"GROUP BY topic, {part}")
    except Exception:  # no health table yet
        return {}, {}
    positions = {(r[0], int(r[1])): int(r[2]) for r in rows if r[2] is not None}
    newest = {(r[0], int(r[1])): _epoch_ms(r[3]) for r in rows if r[3] is not None}
    return positions, newest


def _epoch_ms(value) -> int:
    """A TIMESTAMP as read back (naive UTC or aware datetime) -> epoch ms."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return int(value.timestamp() * 1000)


def _sql_timestamp(ms: int) -> str:
    """A TIMESTAMP literal (UTC) that DuckDB, PostgreSQL and BigQuery all read."""
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return f"TIMESTAMP '{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def lag_by_partition(kafka, ends: dict[tuple[str, int], int], topics: dict[str, str]):
    """(positions, high watermarks) of every event topic-partition: position from the ledger
    ends (the earliest offset where the warehouse holds nothing), high watermark from a
    Fetch."""
    from cx360.transforms.kafka_io import beginning_offsets, high_watermarks, list_partitions

    parts = list_partitions(kafka, event_topics(topics))
    tps = [(t, p) for t, ps in parts.items() for p in ps]
    positions = {tp: ends.get(tp) for tp in tps}
    missing = [tp for tp, pos in positions.items() if pos is None]
    if missing:
        positions.update(beginning_offsets(kafka, missing))
    return positions, high_watermarks(kafka, positions)


def health_rows(batch, result, positions, watermarks, newest, dead_by_partition,
                now_ms: int) -> list[dict]:
    """The pipeline_health rows of one batch (pure: every measure is passed in)."""
    records_in: dict[tuple[str, int], int] = {}
    for r in batch.ranges:
        records_in[(r.topic, r.partition)] = records_in.get((r.topic, r.partition), 0) + (
            r.stop - r.start)
    total = sum(records_in.values())
    rate = round(total / result.seconds, 1) if result.seconds > 0 else None
    rows = []
    for tp in sorted(set(positions) | set(records_in)):
        reasons = dead_by_partition.get(tp, {})
        dead = sum(reasons.values())
        n = records_in.get(tp, 0)
        hw, pos = watermarks.get(tp), positions.get(tp)
        event_time = newest.get(tp)
        rows.append({
            "batch_id": batch.batch_id, "topic": tp[0], "partition": tp[1],
            "recorded_at": now_ms, "records_in": n, "accepted": n - dead, "dead_letters": dead,
            "dead_letters_by_reason": json.dumps(dict(sorted(reasons.items()))),
            "position": pos, "high_watermark": hw,
            "lag": max(0, hw - pos) if hw is not None and pos is not None else None,
            "max_event_time": event_time,
            "freshness_s": (now_ms - event_time) / 1000.0 if event_time is not None else None,
            "batch_seconds": round(result.seconds, 3), "records_per_s": rate})
    return rows


def _dead_by_partition(warehouse, batch_id: str) -> dict[tuple[str, int], dict[str, int]]:
    if not all(c.isalnum() or c in "-_." for c in batch_id):
        raise ValueError(f"unexpected batch id {batch_id!r}")
    rows = warehouse.query(f"SELECT topic, {warehouse.quote('partition')}, reason, count(*) "
                           f"FROM dead_letters WHERE batch_id = '{batch_id}' GROUP BY 1, 2, 3")
    out: dict[tuple[str, int], dict[str, int]] = {}
    for topic, partition, reason, count in rows:
        out.setdefault((topic, int(partition)), {})[reason] = int(count)
    return out


def write_health(warehouse, rows: list[dict]) -> None:
    """Upsert health rows (replace by batch, topic, partition: a re-measure is idempotent)."""
    from cx360.transforms.warehouse.panes import upsert

    if rows:
        warehouse.ensure_tables([PIPELINE_HEALTH])
        upsert(warehouse, PIPELINE_HEALTH, rows, "replace")


def record_health(config, warehouse, batch, result) -> list[dict]:
    """Measure and store the health rows of an applied batch; never raises (logs instead)."""
    try:
        positions, watermarks = lag_by_partition(config.kafka, ledger_ends(warehouse),
                                                 config.topics)
        rows = health_rows(batch, result, positions, watermarks, newest_event_times(warehouse),
                           _dead_by_partition(warehouse, batch.batch_id),
                           int(time.time() * 1000))
        write_health(warehouse, rows)
        return rows
    except Exception as exc:  # observability must never fail a batch that is applied
        LOG.warning("health of batch %s not recorded: %s: %s", batch.batch_id,
                    type(exc).__name__, exc)
        return []


# -- evaluation ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Thresholds:
    warn_lag: int = 1_000
    max_lag: int = 10_000
    warn_staleness_s: float = 15 * 60
    max_staleness_s: float = 60 * 60
    warn_dead_letter_rate: float = 0.01
    max_dead_letter_rate: float = 0.05
    rate_window_s: float = 60 * 60
    max_pending_age_s: float = 10 * 60


@dataclasses.dataclass
class Check:
    name: str
    status: int
    message: str
    value: float | None = None

    def as_dict(self) -> dict:
        return {"check": self.name, "status": STATUS_NAMES[self.status],
                "value": self.value, "message": self.message}


def _grade(value: float, warn: float, crit: float) -> int:
    return CRITICAL if value > crit else WARN if value > warn else OK


def check_lag(positions, watermarks, t: Thresholds) -> Check:
    lags = {tp: max(0, watermarks[tp] - positions[tp]) for tp in watermarks
            if positions.get(tp) is not None}
    total = sum(lags.values())
    worst = max(lags.items(), key=lambda kv: kv[1], default=(None, 0))
    where = f" (most at {worst[0][0]}/{worst[0][1]}: {worst[1]})" if worst[1] else ""
    return Check("lag", _grade(total, t.warn_lag, t.max_lag),
                 f"{total} records behind{where}; warn > {t.warn_lag}, critical > {t.max_lag}",
                 total)


def check_freshness(newest: dict[tuple[str, int], int], topics: list[str], now_ms: int,
                    t: Thresholds) -> Check:
    by_topic: dict[str, int] = {}
    for (topic, _), ms in newest.items():
        if topic in topics:
            by_topic[topic] = max(by_topic.get(topic, ms), ms)
    if not by_topic:
        return Check("freshness", WARN, "no events in the warehouse yet", None)
    stalest = min(by_topic, key=by_topic.get)
    age = max(0.0, (now_ms - by_topic[stalest]) / 1000.0)
    return Check("freshness", _grade(age, t.warn_staleness_s, t.max_staleness_s),
                 f"newest event of {stalest} is {age:,.0f} s old; warn > "
                 f"{t.warn_staleness_s:,.0f} s, critical > {t.max_staleness_s:,.0f} s", age)


def check_dead_letters(records_in: int, dead: int, t: Thresholds) -> Check:
    if not records_in:
        return Check("dead_letter_rate", OK, "no records processed in the rate window", 0.0)
    rate = dead / records_in
    return Check("dead_letter_rate", _grade(rate, t.warn_dead_letter_rate,
                                            t.max_dead_letter_rate),
                 f"{dead} of {records_in} records ({rate:.2%}) dead-lettered in the last "
                 f"{t.rate_window_s:,.0f} s; warn > {t.warn_dead_letter_rate:.2%}, critical > "
                 f"{t.max_dead_letter_rate:.2%}", round(rate, 6))


def recent_volume(warehouse, since_ms: int, topics: list[str]) -> tuple[int, int]:
    """(records in, dead letters) of the health rows recorded since ``since_ms``."""
    try:
        rows = warehouse.query(
            "SELECT topic, sum(records_in), sum(dead_letters) FROM pipeline_health "
            f"WHERE recorded_at >= {_sql_timestamp(since_ms)} GROUP BY topic")
    except Exception:  # no health table yet
        return 0, 0
    rows = [r for r in rows if r[0] in topics]
    return int(sum(r[1] or 0 for r in rows)), int(sum(r[2] or 0 for r in rows))


def check_pending(pending: list[tuple[str, int]], now_ms: int, t: Thresholds) -> Check:
    """Batches (id, created ms) still pending: normal while a batch runs, a sign of an
    interrupted run once older than ``t.max_pending_age_s``."""
    stuck = [batch_id for batch_id, created in pending
             if now_ms - created > t.max_pending_age_s * 1000]
    if stuck:
        return Check("pending_batches", WARN, f"{len(stuck)} batch(es) pending for more than "
                     f"{t.max_pending_age_s:,.0f} s (an interrupted run? the next `cx360 run` "
                     f"re-runs them): {', '.join(stuck[:3])}", len(stuck))
    return Check("pending_batches", OK, f"no interrupted batch ({len(pending)} in progress)",
                 0)


def overall(checks: list[Check]) -> int:
    return max((c.status for c in checks), default=OK)
