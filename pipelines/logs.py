"""Logging set-up: plain or JSON lines, and a filter that keeps secrets out of every record."""
from __future__ import annotations

import json
import logging
import os
import time

# Environment variables whose values must never appear in a log line.
SECRET_ENV_VARS = ("CX360_KAFKA_SASL_PASSWORD", "CX360_KAFKA_SSL_KEY_PASSWORD",
                   "CX360_SCHEMA_REGISTRY_PASSWORD", "CX360_PSEUDONYM_KEY")


class RedactSecrets(logging.Filter):
    """Replaces the value of any secret from the environment by '***' in a log message."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [os.environ[n] for n in SECRET_ENV_VARS if os.environ.get(n)]
        if secrets:
            message = record.getMessage()
            for secret in secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class DropKnownNoise(logging.Filter):
    """Beam warns at import that the BigQuery client is missing when the [gcp] extra is not
    installed, which is the normal local set-up: not worth a line on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and "apitools not found" in str(record.msg))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "cx360", None)  # structured fields: extra={"cx360": {...}}
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "WARNING", as_json: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RedactSecrets())
    handler.addFilter(DropKnownNoise())
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every refused connection and retry; cx360 reports the outcome itself
    # (one line), so its own logs show only at DEBUG.
    logging.getLogger("kafka").setLevel(logging.DEBUG if root.level <= logging.DEBUG
                                        else logging.CRITICAL)


def current_settings() -> tuple[str, bool]:
    """(level, as_json) of this process's logging, for worker processes to log alike."""
    root = logging.getLogger()
    as_json = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.level), as_json
