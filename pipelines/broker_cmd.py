"""`cx360 broker start|stop|status`: the local in-memory broker for the demo and tests."""
from __future__ import annotations

import argparse

from cx360.pipelines.broker import BrokerError, LocalBroker, port_open
from cx360.pipelines.cli import UserError


def register(sub) -> None:
    parser = sub.add_parser("broker", help="start, stop or show the local Kafka broker (Tansu)",
                            description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--port", type=int, default=19092, help="listen port (default 19092)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    broker = LocalBroker(host=args.host, port=args.port)
    try:
        if args.action == "start":
            already = broker.pid()
            pid = broker.start()
            state = "already running" if already else "started"
            print(f"broker {state}: pid {pid}, bootstrap {broker.bootstrap}, log {broker.log_file}")
            print("note: the local broker keeps data in memory only; stopping it loses it")
            return 0
        if args.action == "stop":
            print("broker stopped" if broker.stop() else "broker was not running")
            return 0
        pid = broker.pid()
        if pid is None:
            print("broker not running")
            return 1
        reachable = port_open(broker.host, broker.port)
        print(f"broker running: pid {pid}, bootstrap {broker.bootstrap}, "
              f"{'listening' if reachable else 'NOT listening'}")
        return 0 if reachable else 1
    except BrokerError as exc:
        raise UserError(str(exc)) from None
