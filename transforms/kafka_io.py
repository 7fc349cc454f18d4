"""Kafka clients in pure Python (kafka-python): connection settings, topic metadata, high
watermarks and offset commits. No Beam import here, so the command line starts fast; the Beam
source is cx360.transforms.kafka_source.

What this module avoids because some Kafka-compatible brokers (Tansu, our local default) get it
wrong: ListOffsets LATEST (``end_offsets``) and consumer-group membership. The end of a
partition is the high watermark from a Fetch response; partitions are ``assign()``-ed, never
subscribed; offsets are committed under a group id only for visibility to Kafka tools.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import time
from typing import Iterable, NamedTuple


LOG = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    """How to reach a Kafka cluster. Secrets come from the environment and never show in
    ``repr`` (and so never in logs): CX360_KAFKA_SASL_PASSWORD, CX360_KAFKA_SSL_KEY_PASSWORD."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = dataclasses.field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = dataclasses.field(default=None, repr=False)
    client_id: str = "cx360"
    request_timeout_ms: int = 30000

    def __post_init__(self):
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security protocol must be one of {', '.join(SECURITY_PROTOCOLS)}")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"SASL needs a mechanism: {', '.join(SASL_MECHANISMS)}")
            if not self.sasl_username:
                raise ValueError("SASL needs a username (--sasl-username)")

    @classmethod
    def from_env(cls, **kwargs) -> "KafkaConfig":
        """Fill secrets from the environment unless given."""
        kwargs.setdefault("sasl_password", os.environ.get("CX360_KAFKA_SASL_PASSWORD"))
        kwargs.setdefault("ssl_key_password", os.environ.get("CX360_KAFKA_SSL_KEY_PASSWORD"))
        return cls(**kwargs)

    def client_kwargs(self) -> dict:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        kwargs = {"bootstrap_servers": self.bootstrap_servers.split(","),
                  "security_protocol": self.security_protocol,
                  "client_id": self.client_id,
                  "request_timeout_ms": self.request_timeout_ms}
        if self.security_protocol.startswith("SASL"):
            kwargs.update(sasl_mechanism=self.sasl_mechanism,
                          sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password or "")
        if self.security_protocol.endswith("SSL"):
            kwargs.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile,
                          ssl_keyfile=self.ssl_keyfile, ssl_password=self.ssl_key_password)
        return kwargs


class KafkaUnavailable(Exception):
    """The cluster could not be reached or answered with an error."""


def check_reachable(config: KafkaConfig, timeout_s: float = 5.0) -> None:
    """Fail fast, with a clear message, when no bootstrap server accepts a TCP connection
    (kafka-python would otherwise retry for its whole request timeout)."""
    import socket

    errors = []
    for server in config.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)),
                                          timeout=timeout_s):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{server.strip()}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
    raise KafkaUnavailable(f"cannot reach Kafka at {config.bootstrap_servers} ({'; '.join(errors)})")


def admin_client(config: KafkaConfig):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    check_reachable(config)
    try:
        return KafkaAdminClient(**config.client_kwargs())
    except (KafkaError, OSError, ValueError) as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {config.bootstrap_servers}: {type(exc).__name__}") from None


def producer(config: KafkaConfig, **overrides):
    """A producer tuned for throughput (linger 20 ms, 256 KiB batches) with acks=all."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    settings = dict(acks="all", linger_ms=20, batch_size=256 * 1024, retries=5,
                    max_in_flight_requests_per_connection=1)
    settings.update(overrides)
    try:
        return KafkaProducer(**config.client_kwargs(), **settings)
    except (KafkaError, OSError, ValueError) as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {config.bootstrap_servers}: {type(exc).__name__}") from None


def consumer(config: KafkaConfig, **overrides):
    """A consumer for ``assign()``: no group membership, no auto commit, short fetch waits
    (some brokers do not wake a long-poll fetch when data arrives)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    settings = dict(enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50,
                    max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
                    auto_offset_reset="earliest", check_crcs=True)
    settings.update(overrides)
    try:
        return KafkaConsumer(**config.client_kwargs(), **settings)
    except (KafkaError, OSError, ValueError) as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {config.bootstrap_servers}: {type(exc).__name__}") from None


class KafkaRecord(NamedTuple):
    """One record as read, before decoding: the original bytes and where they came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def pack_records(records: list[KafkaRecord]) -> bytes:
    """One batch of records as a single bytes value. Beam's generic coder pickles a
    KafkaRecord one by one wherever a batch crosses a stage boundary (measured: ~4 s per 50k
    records on the local runner); one pickle of plain tuples costs a few ms per batch."""
    return pickle.dumps([tuple(r) for r in records], protocol=pickle.HIGHEST_PROTOCOL)


def unpack_records(batch: bytes | list) -> list[KafkaRecord]:
    """Records of a packed batch (a plain list of records is passed through)."""
    if isinstance(batch, (bytes, bytearray)):
        return [KafkaRecord(*r) for r in pickle.loads(batch)]
    return batch


class PartitionRange(NamedTuple):
    """Offsets ``[start, stop)`` of one topic-partition; ``stop`` None is open-ended."""

    topic: str
    partition: int
    start: int
    stop: int | None


OPEN_END = 2 ** 63 - 1


def list_partitions(config: KafkaConfig, topics: Iterable[str],
                    timeout_s: float = 15.0) -> dict[str, list[int]]:
    """Partition numbers of each topic; raises KafkaUnavailable for a missing topic."""
    check_reachable(config)
    kafka_consumer = consumer(config)
    try:
        result = {}
        for topic in topics:
            deadline = time.monotonic() + timeout_s
            parts = kafka_consumer.partitions_for_topic(topic)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                parts = kafka_consumer.partitions_for_topic(topic)
            if not parts:
                raise KafkaUnavailable(f"topic {topic!r} does not exist on "
                                       f"{config.bootstrap_servers} (cx360 topics create)")
            result[topic] = sorted(parts)
        return result
    finally:
        kafka_consumer.close()


def high_watermarks(config: KafkaConfig, positions: dict[tuple[str, int], int],
                    timeout_s: float = 30.0) -> dict[tuple[str, int], int]:
    """The high watermark of each (topic, partition), read from Fetch responses.

    ListOffsets LATEST is not used: some brokers answer it wrongly after batched produce.
    Each partition is fetched from its ``positions`` value (where the next read starts, so the
    probe costs at most one small fetch per partition) and paused once its watermark is known.
    """
    from kafka import TopicPartition

    kafka_consumer = consumer(config, max_partition_fetch_bytes=64 * 1024)
    try:
        tps = {TopicPartition(t, p): offset for (t, p), offset in positions.items()}
        if not tps:
            return {}
        kafka_consumer.assign(list(tps))
        for tp, offset in tps.items():
            kafka_consumer.seek(tp, offset)
        found: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(tps):
            if time.monotonic() > deadline:
                missing = sorted(f"{tp.topic}/{tp.partition}" for tp in tps
                                 if (tp.topic, tp.partition) not in found)
                raise KafkaUnavailable(
                    f"no fetch answer from {config.bootstrap_servers} for {', '.join(missing)} "
                    f"within {timeout_s:.0f}s")
            kafka_consumer.poll(timeout_ms=100, max_records=1)
            for tp in tps:
                key = (tp.topic, tp.partition)
                if key not in found:
                    hw = kafka_consumer.highwater(tp)
                    if hw is not None:
                        found[key] = hw
                        kafka_consumer.pause(tp)
        return found
    finally:
        kafka_consumer.close()


def beginning_offsets(config: KafkaConfig, tps: Iterable[tuple[str, int]]
                      ) -> dict[tuple[str, int], int]:
    from kafka import TopicPartition

    kafka_consumer = consumer(config)
    try:
        answer = kafka_consumer.beginning_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): off for tp, off in answer.items()}
    finally:
        kafka_consumer.close()


def first_offset_at_or_after(config: KafkaConfig, tp: tuple[str, int], timestamp_ms: int,
                             low: int, high: int) -> int:
    """The first offset in ``[low, high)`` whose record timestamp is >= ``timestamp_ms`` (``high``
    if none), by binary search over single-record fetches.

    ListOffsets-by-time (``offsets_for_times``) is not used: some brokers answer it per record
    batch only, and with 0 instead of "none" after the last record, which would replay a whole
    topic. Like Kafka's own time index, this assumes timestamps grow with offsets (CreateTime
    stamped by well-behaved producers); with out-of-order stamps it finds *a* boundary.
    """
    from kafka import TopicPartition

    partition = TopicPartition(*tp)
    kafka_consumer = consumer(config, max_partition_fetch_bytes=64 * 1024)
    try:
        kafka_consumer.assign([partition])

        def stamp_at(offset: int) -> tuple[int, int]:
            """(offset, timestamp) of the first record at or after ``offset``."""
            kafka_consumer.seek(partition, offset)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                records = kafka_consumer.poll(timeout_ms=200, max_records=1).get(partition)
                if records:
                    return records[0].offset, records[0].timestamp
            raise KafkaUnavailable(f"no record at {tp[0]}/{tp[1]} offset {offset}")

        lo, hi = low, high
        while lo < hi:
            mid = (lo + hi) // 2
            found, stamp = stamp_at(mid)
            if found >= hi:  # only a gap up to the end of the search range
                hi = mid
            elif stamp >= timestamp_ms:
                hi = mid
            else:
                lo = found + 1
        return lo
    finally:
        kafka_consumer.close()


def commit_group_offsets(config: KafkaConfig, group_id: str,
                         offsets: dict[tuple[str, int], int]) -> None:
    """Commit offsets under ``group_id`` without joining the group, so that standard Kafka
    tools show the pipeline's position and lag. The warehouse ledger stays authoritative."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    if not offsets:
        return
    kafka_consumer = consumer(config, group_id=group_id)
    try:
        kafka_consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                               for (t, p), o in offsets.items()})
    finally:
        kafka_consumer.close()


def committed_group_offsets(config: KafkaConfig, group_id: str,
                            tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
    from kafka import TopicPartition

    kafka_consumer = consumer(config, group_id=group_id)
    try:
        return {(t, p): kafka_consumer.committed(TopicPartition(t, p)) for t, p in tps}
    finally:
        kafka_consumer.close()
