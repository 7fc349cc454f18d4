"""Flex Template launcher: template parameters -> `cx360 stream` options.

Dataflow's launcher runs ``python launcher.py --name=value ...`` with the template parameters
(metadata.json; names are `cx360 stream` options with '_' for '-') and Dataflow's own pipeline
options (--project, --region, --temp_location, --staging_location, --job_name,
--sdk_container_image, ...). cx360's options go before '--', everything else after it.
"""
import json
import pathlib
import sys

from cx360.pipelines.cli import main

METADATA = pathlib.Path(__file__).with_name("metadata.json")
# Options `cx360 stream` sets itself (it refuses them among the Beam options).
DROPPED = ("--runner", "--streaming")


def translate(argv, parameter_names):
    ours, beam = [], []
    for arg in argv:
        name, sep, value = arg.partition("=")
        key = name[2:] if name.startswith("--") else None
        if key in parameter_names and sep:
            if value != "":
                ours += ["--" + key.replace("_", "-"), value]
        elif name in DROPPED:
            continue
        else:
            beam.append(arg)
    return ["stream", "--runner", "DataflowRunner", *ours, "--", *beam]


def parameter_names():
    if METADATA.exists():  # next to the launcher in the image
        return {p["name"] for p in json.loads(METADATA.read_text())["parameters"]}
    return {"bootstrap_servers", "kafka_source", "start_from", "group_id", "windows", "sliding",
            "session_gap", "allowed_lateness", "lateness_slack", "early_firing",
            "dedupe_horizon", "max_future", "warehouse", "social_topic", "web_topic",
            "survey_topic", "dead_letter_topic", "schema_registry", "security_protocol",
            "sasl_mechanism", "sasl_username"}


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:], parameter_names())))
