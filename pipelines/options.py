"""Command-line options shared by several cx360 commands, and their validation.

Every command that talks to Kafka takes the same connection options, so any real cluster works
the same way as the local broker. Secrets are read from the environment only:
CX360_KAFKA_SASL_PASSWORD, CX360_KAFKA_SSL_KEY_PASSWORD, CX360_SCHEMA_REGISTRY_PASSWORD.
"""
from __future__ import annotations

import argparse
import os

from cx360.pipelines.cli import UserError
from cx360.transforms.kafka_io import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaConfig

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"

#: Event kind -> default topic name.
DEFAULT_TOPICS = {"social": "cx.social", "web": "cx.web", "survey": "cx.survey",
                  "dead_letter": "cx.dead-letter"}
EVENT_ROLES = ("social", "web", "survey")


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kafka connection")
    group.add_argument("--bootstrap-servers",
                       default=os.environ.get("CX360_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
                       help="host:port[,host:port] (env CX360_BOOTSTRAP_SERVERS; default "
                            f"{DEFAULT_BOOTSTRAP}, the local broker)")
    group.add_argument("--security-protocol", default=os.environ.get(
        "CX360_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"), choices=SECURITY_PROTOCOLS)
    group.add_argument("--sasl-mechanism", default=os.environ.get("CX360_KAFKA_SASL_MECHANISM"),
                       choices=SASL_MECHANISMS)
    group.add_argument("--sasl-username", default=os.environ.get("CX360_KAFKA_SASL_USERNAME"),
                       help="SASL user; the password only from env CX360_KAFKA_SASL_PASSWORD")
    group.add_argument("--ssl-cafile", default=os.environ.get("CX360_KAFKA_SSL_CAFILE"))
    group.add_argument("--ssl-certfile", default=os.environ.get("CX360_KAFKA_SSL_CERTFILE"))
    group.add_argument("--ssl-keyfile", default=os.environ.get("CX360_KAFKA_SSL_KEYFILE"),
                       help="client key; its password only from env CX360_KAFKA_SSL_KEY_PASSWORD")


def kafka_config_from_args(args: argparse.Namespace) -> KafkaConfig:
    try:
        return KafkaConfig.from_env(
            bootstrap_servers=args.bootstrap_servers,
            security_protocol=args.security_protocol,
            sasl_mechanism=args.sasl_mechanism,
            sasl_username=args.sasl_username,
            ssl_cafile=args.ssl_cafile,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def add_topic_args(parser: argparse.ArgumentParser, dead_letter: bool = True) -> None:
    group = parser.add_argument_group("topics")
    roles = EVENT_ROLES + (("dead_letter",) if dead_letter else ())
    for role in roles:
        flag = "--" + role.replace("_", "-") + "-topic"
        group.add_argument(flag, dest=f"{role}_topic", default=DEFAULT_TOPICS[role],
                           help=f"topic of {role.replace('_', '-')} events "
                                f"(default {DEFAULT_TOPICS[role]})")


def topics_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Event kind -> topic name, from --social-topic etc."""
    topics = {role: getattr(args, f"{role}_topic") for role in DEFAULT_TOPICS
              if hasattr(args, f"{role}_topic")}
    names = list(topics.values())
    if len(set(names)) != len(names):
        raise UserError(f"each kind of event needs its own topic, got {topics}")
    return topics


def add_registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema-registry", default=os.environ.get("CX360_SCHEMA_REGISTRY", ""),
        help="'' (default: the schemas shipped in cx360.schemas), a folder or file:DIR[,DIR] "
             "with a registry.json of further schema versions, or http(s)://HOST for a "
             "Confluent-compatible Schema Registry (user in env CX360_SCHEMA_REGISTRY_USER, "
             "password in CX360_SCHEMA_REGISTRY_PASSWORD)")


def registry_from_args(args: argparse.Namespace):
    from cx360.schemas.registry import RegistryError, registry_from_url

    try:
        return registry_from_url(args.schema_registry)
    except RegistryError as exc:
        raise UserError(str(exc)) from None


def open_warehouse_arg(url: str, read_only: bool = False):
    """open_warehouse for a command's --warehouse: a bad URL, a missing file or a locked one
    becomes a one-line UserError (exit 2) instead of a traceback."""
    from cx360.transforms.warehouse import WarehouseError, open_warehouse

    try:
        return open_warehouse(url, read_only=read_only)
    except WarehouseError as exc:
        raise UserError(str(exc)) from None
