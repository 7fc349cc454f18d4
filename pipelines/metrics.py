"""Prometheus metrics of `cx360 run` in continuous mode (``--metrics-port``).

Updated from each batch's result and its pipeline_health rows (pipelines/health.py). Names
and labels are what deploy/monitoring/ (alert rules, Grafana dashboard) query.
"""
from __future__ import annotations


class PipelineMetrics:
    """A private registry served on ``port`` (0 = any free port; see ``self.port``)."""

    def __init__(self, port: int, addr: str = "0.0.0.0"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter("cx360_records_read", "Records read from Kafka.",
                               ["topic"], registry=r)
        self.accepted = Counter("cx360_records_accepted", "Records decoded and validated.",
                                ["topic"], registry=r)
        self.duplicates = Counter("cx360_duplicates", "Re-sent events counted once.",
                                  ["topic"], registry=r)
        self.dead = Counter("cx360_dead_letters", "Records dead-lettered.",
                            ["topic", "reason"], registry=r)
        self.batches = Counter("cx360_batches", "Micro-batches applied.", registry=r)
        self.unreconciled = Counter("cx360_reconciliation_failures",
                                    "Batches where read != accepted + dead letters.",
                                    registry=r)
        self.lag = Gauge("cx360_consumer_lag", "High watermark minus the warehouse position.",
                         ["topic", "partition"], registry=r)
        self.watermark = Gauge("cx360_event_time_watermark_seconds",
                               "Newest event_time in the warehouse (epoch seconds).",
                               ["topic", "partition"], registry=r)
        self.freshness = Gauge("cx360_freshness_seconds",
                               "Now minus the newest event_time in the warehouse.",
                               ["topic"], registry=r)
        self.duration = Gauge("cx360_batch_duration_seconds", "Duration of the last batch.",
                              registry=r)
        self.rate = Gauge("cx360_records_per_second", "Processing rate of the last batch.",
                          registry=r)
        self.last_batch = Gauge("cx360_last_batch_timestamp_seconds",
                                "When the last batch finished (epoch seconds).", registry=r)
        self.last_run = Gauge("cx360_last_poll_timestamp_seconds",
                              "When the driver last looked for new data (epoch seconds).",
                              registry=r)
        server, _thread = start_http_server(port, addr=addr, registry=r)
        self._server = server
        self.port = server.server_address[1]

    def observe(self, results, now_s: float) -> None:
        self.last_run.set(now_s)
        for result in results:
            self.batches.inc()
            for topic, n in result.read.items():
                self.records.labels(topic).inc(n)
            for topic, n in result.accepted.items():
                self.accepted.labels(topic).inc(n)
            for topic, n in result.duplicates.items():
                self.duplicates.labels(topic).inc(n)
            for topic, reasons in result.dead_letters.items():
                for reason, n in reasons.items():
                    self.dead.labels(topic, reason).inc(n)
            topics = set(result.read) | set(result.accepted) | set(result.dead_letters)
            if any(result.read.get(t, 0) != result.accepted.get(t, 0)
                   + sum(result.dead_letters.get(t, {}).values()) for t in topics):
                self.unreconciled.inc()
            self.duration.set(result.seconds)
            self.rate.set(result.records / result.seconds if result.seconds > 0 else 0)
            self.last_batch.set(now_s)
            newest: dict[str, float] = {}
            for row in result.health:
                labels = (row["topic"], str(row["partition"]))
                if row["lag"] is not None:
                    self.lag.labels(*labels).set(row["lag"])
                if row["max_event_time"] is not None:
                    self.watermark.labels(*labels).set(row["max_event_time"] / 1000.0)
                    newest[row["topic"]] = max(newest.get(row["topic"], 0.0),
                                               row["max_event_time"] / 1000.0)
            for topic, seconds in newest.items():
                self.freshness.labels(topic).set(max(0.0, now_s - seconds))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
