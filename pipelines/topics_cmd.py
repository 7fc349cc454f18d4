"""`cx360 topics create|list`: the event and dead-letter topics, on any Kafka cluster."""
from __future__ import annotations

import argparse

from cx360.pipelines.cli import UserError
from cx360.pipelines.options import (add_kafka_args, add_topic_args, kafka_config_from_args,
                                     topics_from_args)
from cx360.transforms.kafka_io import KafkaUnavailable, admin_client


def register(sub) -> None:
    parser = sub.add_parser("topics", help="create or list the cx360 topics")
    parser.add_argument("action", choices=["create", "list"])
    parser.add_argument("--partitions", type=int, default=3,
                        help="partitions of each event topic (default 3)")
    parser.add_argument("--dead-letter-partitions", type=int, default=1)
    parser.add_argument("--replication-factor", type=int, default=1)
    add_topic_args(parser)
    add_kafka_args(parser)
    parser.set_defaults(handler=run)


def create_topics(config, topics: dict[str, str], partitions: int, dl_partitions: int = 1,
                  replication_factor: int = 1) -> tuple[list[str], list[str]]:
    """Create the topics that do not exist yet: returns (created, already there)."""
    from kafka.admin import NewTopic

    admin = admin_client(config)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, dl_partitions if role == "dead_letter" else partitions,
                           replication_factor) for role, name in topics.items()
                  if name not in existing]
        if wanted:
            admin.create_topics(wanted)
        return [t.name for t in wanted], sorted(set(topics.values()) & existing)
    finally:
        admin.close()


def run(args: argparse.Namespace) -> int:
    if args.partitions < 1 or args.dead_letter_partitions < 1:
        raise UserError("partition counts must be at least 1")
    config = kafka_config_from_args(args)
    topics = topics_from_args(args)
    try:
        if args.action == "create":
            created, existing = create_topics(config, topics, args.partitions,
                                              args.dead_letter_partitions,
                                              args.replication_factor)
            for name in created:
                print(f"created {name}")
            for name in existing:
                print(f"exists  {name}")
            return 0
        admin = admin_client(config)
        try:
            names = sorted(admin.list_topics())
        finally:
            admin.close()
        for name in names:
            print(name)
        return 0
    except KafkaUnavailable as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # kafka-python raises many KafkaError subclasses
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            raise UserError(f"Kafka refused: {exc}") from None
        raise
