"""The `cx360` command line.

Each sub-command lives in its own module under cx360.pipelines and registers itself through a
``register(subparsers)`` function listed in COMMAND_MODULES. A command's handler returns the
process exit code. Errors a user can fix (bad option values, an unreachable broker, a bad
warehouse URL) are raised as :class:`UserError` and printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from cx360 import __version__

COMMAND_MODULES = (
    "cx360.pipelines.broker_cmd",
    "cx360.pipelines.topics_cmd",
    "cx360.pipelines.generate_cmd",
    "cx360.pipelines.produce_cmd",
    "cx360.pipelines.run_cmd",
    "cx360.pipelines.stream_cmd",
    "cx360.pipelines.summary_cmd",
    "cx360.pipelines.report_cmd",
    "cx360.pipelines.sentiment_cmd",
    "cx360.pipelines.eval_cmd",
    "cx360.pipelines.forget_cmd",
    "cx360.pipelines.health_cmd",
    "cx360.pipelines.replay_cmd",
)


class UserError(Exception):
    """A problem the user can fix; printed as one line and exit code 2."""

    exit_code = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cx360",
        description="Streaming customer-experience pipeline: Kafka -> Beam -> warehouse.",
    )
    parser.add_argument("--version", action="version", version=f"cx360 {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default WARNING)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not shipped in this build
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def configure_logging(level: str, as_json: bool) -> None:
    from cx360.pipelines.logs import configure

    configure(level, as_json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"cx360 {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"cx360 {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    # Run through the imported module, so that its UserError is the one commands raise.
    from cx360.pipelines.cli import main as _main

    sys.exit(_main())
