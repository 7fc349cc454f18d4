"""`make bench`: end-to-end and per-stage throughput of cx360 against a plain-Python floor,
all measured in one run on the same seeded data (ratios are what to compare across machines).

Steps: start a private local broker, generate a fixed seeded dataset (default 200k mixed
events) into it, then measure
  (a) end to end: `cx360 run --once` in a subprocess: events/s and peak RSS;
  (b) per stage, in plain Python over the same records: read, decode, sentiment, dedupe,
      KPI components, warehouse write;
  (c) the floor: read + decode + sentiment + aggregation in one plain-Python loop, no Beam;
  (d) raw kafka-python consume rate.
Prints a table and writes bench/results.json.

    python bench/run_bench.py [--events 200000] [--seed 7]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def consume_all(config, topics: list[str]):
    """Every record of the topics, via assign/seek and the Fetch high watermark."""
    from kafka import TopicPartition

    from cx360.transforms.kafka_io import (KafkaRecord, consumer, high_watermarks,
                                           list_partitions)

    parts = list_partitions(config, topics)
    tps = [(t, p) for t in topics for p in parts[t]]
    ends = high_watermarks(config, {tp: 0 for tp in tps})
    kafka_consumer = consumer(config, max_poll_records=5000)
    out = []
    try:
        for topic, partition in tps:
            tp = TopicPartition(topic, partition)
            kafka_consumer.assign([tp])
            kafka_consumer.seek(tp, 0)
            position = 0
            while position < ends[(topic, partition)]:
                for record in kafka_consumer.poll(timeout_ms=500).get(tp, []):
                    out.append(KafkaRecord(record.topic, record.partition, record.offset,
                                           record.timestamp, record.key, record.value))
                    position = record.offset + 1
    finally:
        kafka_consumer.close()
    return out


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args(argv)

    from cx360.pipelines.broker import LocalBroker, free_port
    from cx360.pipelines.generate_cmd import produce_generated
    from cx360.pipelines.generator import GeneratorConfig, generate
    from cx360.pipelines.topics_cmd import create_topics
    from cx360.schemas.registry import FileSchemaRegistry
    from cx360.transforms.counts import count_events
    from cx360.transforms.decode import EventDecoder, decode_all
    from cx360.transforms.dedupe import first_occurrences
    from cx360.transforms.kafka_io import KafkaConfig
    from cx360.transforms.kpis import KpiComputer, load_brands
    from cx360.transforms.sentiment import SentimentScorer
    from cx360.transforms.warehouse import TABLES, Batch, open_warehouse

    work = pathlib.Path(tempfile.mkdtemp(prefix="cx360-bench-"))
    broker = LocalBroker(port=free_port(), home=work / "broker")
    broker.start()
    results: dict = {"events": args.events, "seed": args.seed}
    try:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
        topics = {"social": "b.social", "web": "b.web", "survey": "b.survey",
                  "dead_letter": "b.dead-letter"}
        create_topics(kafka, topics, partitions=3)
        now = int(time.time() * 1000)
        gen = GeneratorConfig(seed=args.seed, events=args.events,
                              start_ms=(now - 49 * 3_600_000) // 3_600_000 * 3_600_000,
                              now_ms=now)
        print(f"generating {args.events:,} events into {broker.bootstrap} ...", flush=True)
        _, produce_s = timed(produce_generated, kafka, topics, generate(gen))
        results["produce_events_per_s"] = round(args.events / produce_s)

        # (d) raw consume
        event_topics = [topics[r] for r in ("social", "web", "survey")]
        records, read_s = timed(consume_all, kafka, event_topics)
        assert len(records) == args.events, (len(records), args.events)
        stages = {"read": len(records) / read_s}

        # (b) stages in plain Python
        registry = FileSchemaRegistry()
        decoder = EventDecoder(registry, topics)
        (events, dead), decode_s = timed(decode_all, decoder, records, now)
        stages["decode"] = len(records) / decode_s
        scorer = SentimentScorer()
        texts = [(e.get("text") or e.get("comment"), e.get("lang")) for e in events
                 if e.get("text") or e.get("comment")]
        _, sentiment_s = timed(lambda: [scorer.score(t, l) for t, l in texts])
        stages["sentiment"] = len(texts) / sentiment_s
        (unique, dups), dedupe_s = timed(first_occurrences, events, {})
        stages["dedupe"] = len(events) / dedupe_s
        computer = KpiComputer((3600, 86400), scorer)
        rows, kpi_s = timed(lambda: {**computer.rows(unique),
                                     "event_counts": count_events(unique, (3600, 86400))})
        stages["kpi_components"] = len(unique) / kpi_s
        warehouse = open_warehouse(f"duckdb:{work}/stage.duckdb")
        warehouse.ensure_tables(TABLES.values())
        warehouse.record_batch(Batch("bench", now, "pending", []))
        rows["brands"] = load_brands()
        _, write_s = timed(warehouse.write_batch, "bench", rows, TABLES)
        warehouse.close()
        stages["warehouse_write"] = len(unique) / write_s
        results["stages_events_per_s"] = {k: round(v) for k, v in stages.items()}
        results["texts_scored"] = len(texts)

        # (c) the floor: one plain loop over the same records (read time included)
        floor_s = read_s + decode_s + dedupe_s + kpi_s  # kpi_s includes sentiment scoring
        results["floor_events_per_s"] = round(args.events / floor_s)
        results["raw_consume_events_per_s"] = round(stages["read"])

        # (a) end to end
        cmd = [sys.executable, "-m", "cx360.pipelines.cli", "run", "--once", "--json",
               "--warehouse", f"duckdb:{work}/e2e.duckdb", "--bootstrap-servers",
               broker.bootstrap, "--social-topic", topics["social"], "--web-topic",
               topics["web"], "--survey-topic", topics["survey"], "--dead-letter-topic",
               topics["dead_letter"]]
        print("end to end: cx360 run --once ...", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        e2e_s = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        summary = json.loads(done.stdout.splitlines()[-1])
        assert summary["records_read"] == args.events and summary["reconciled"]
        results["e2e_seconds"] = round(e2e_s, 2)
        results["e2e_events_per_s"] = round(args.events / e2e_s)
        results["e2e_pipeline_events_per_s"] = summary["records_per_s"]
        results["peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        results["e2e_vs_floor"] = round(results["floor_events_per_s"] /
                                        results["e2e_events_per_s"], 2)
    finally:
        broker.stop()

    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"{'measure':<34}{'events/s':>12}")
    for stage, rate in results["stages_events_per_s"].items():
        unit = " (texts/s)" if stage == "sentiment" else ""
        print(f"  stage {stage:<27}{rate:>12,}{unit}")
    print(f"{'floor (plain Python, no Beam)':<34}{results['floor_events_per_s']:>12,}")
    print(f"{'raw kafka-python consume':<34}{results['raw_consume_events_per_s']:>12,}")
    print(f"{'end to end cx360 run --once':<34}{results['e2e_events_per_s']:>12,}"
          f"   ({results['e2e_seconds']} s incl. start-up)")
    print(f"floor / end-to-end: {results['e2e_vs_floor']}x   peak RSS {results['peak_rss_mb']} MB")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
