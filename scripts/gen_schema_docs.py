"""Render docs/schemas.md from the registered Avro schemas (their field docs are the source).

Run: python scripts/gen_schema_docs.py > docs/schemas.md   (a test checks it is current)
"""
from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def type_name(t) -> str:
    if isinstance(t, list):
        inner = [type_name(x) for x in t if x != "null"]
        return " \\| ".join(inner) + (" or null" if "null" in t else "")
    if isinstance(t, dict):
        if t.get("logicalType"):
            return f"{t['type']} ({t['logicalType']})"
        if t["type"] == "array":
            return f"array of {type_name(t['items'])}"
        return t["type"]
    return t


def render() -> str:
    from cx360.transforms.decode import REASONS

    index = json.loads((ROOT / "schemas" / "registry.json").read_text())
    out = ["# Event schemas",
           "",
           "Generated from `schemas/*.avsc` by `scripts/gen_schema_docs.py`; do not edit by hand.",
           "",
           "Every Kafka value is Avro in the Confluent wire format: byte 0 is the magic byte `0`,",
           "bytes 1-4 the big-endian schema id, then the Avro binary body. A value that starts",
           "with `{` is read as a JSON event and checked against the same schema (plain JSON",
           "objects, timestamps as epoch milliseconds or ISO-8601 strings).",
           "",
           "Ids are permanent. The file registry (`schemas/registry.json`) assigns them; a team's",
           "own versions go in a folder with its own `registry.json` passed to",
           "`--schema-registry DIR`, or in a Confluent Schema Registry (`--schema-registry",
           "https://...`). Subjects use the record-name strategy, so topics can be renamed.",
           "",
           "Schema evolution: a record is read with its writer schema (by id) and resolved to the",
           "newest registered version of its subject. Fields an older writer lacks get their",
           "defaults; fields a newer writer added that the reader does not know are kept under",
           "`_extra`, never dropped; a record with an unknown id is a dead letter (replayable",
           "once the schema is registered).",
           "",
           "| id | subject | version | file |", "|---|---|---|---|"]
    for entry in index["schemas"]:
        out.append(f"| {entry['id']} | `{entry['subject']}` | {entry['version']} | "
                   f"`schemas/{entry['file']}` |")
    for entry in index["schemas"]:
        schema = json.loads((ROOT / "schemas" / entry["file"]).read_text())
        out += ["", f"## {schema['namespace']}.{schema['name']} (id {entry['id']})", "",
                schema.get("doc", ""), "", "| field | type | default | meaning |",
                "|---|---|---|---|"]
        for field in schema["fields"]:
            default = json.dumps(field["default"]) if "default" in field else "required"
            out.append(f"| `{field['name']}` | {type_name(field['type'])} | {default} | "
                       f"{field.get('doc', '').replace('|', chr(92) + '|')} |")
    out += ["", "## Dead-letter reasons", "",
            "| reason | stage | when |", "|---|---|---|"]
    meaning = {
        "empty_value": "the record has no value (tombstone) or an empty one",
        "undecodable": "neither wire-format Avro nor JSON, or a corrupt/truncated Avro body",
        "unknown_schema_id": "the header names a schema id the registry does not know",
        "incompatible_schema": "the writer schema cannot be read as this topic's event kind",
        "invalid_json": "starts like JSON but does not parse, or is not an object",
        "schema_violation": "JSON with a wrong type for a field",
        "missing_field": "a required field is missing (JSON) or empty",
        "invalid_value": "a value outside its domain: NPS 11, negative order value, "
                         "unknown event type, a reply not by a brand account, a string holding a "
                         "NUL (PostgreSQL cannot store it) or a lone surrogate (JSON "
                         "`\\ud83d` alone: not Unicode text), ...",
        "future_timestamp": "event_time further ahead than the allowed clock skew "
                            "(`--max-future`, default 15 min)",
        "too_late": "streaming mode: later than the allowed lateness of its window",
        "warehouse_rejected": "the warehouse refused the row (e.g. BigQuery `invalid`)",
    }
    for reason, stage in REASONS.items():
        out.append(f"| `{reason}` | {stage.replace('|', ' or ')} | {meaning[reason]} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
