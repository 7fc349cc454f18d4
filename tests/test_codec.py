"""Confluent wire format, writer/reader schema resolution in both directions, JSON events."""
import io
import json
import struct

import fastavro
import pytest

from cx360.schemas.codec import AvroCodec, DecodeError, JsonEventReader, parse_timestamp_ms
from cx360.schemas.registry import (SOCIAL, SURVEY, WEB, FileSchemaRegistry, RegistryError,
                                    registry_from_url)
from conftest import DATA

V2_DIR = DATA / "schemas_v2"

SOCIAL_V1 = {"event_id": "s-1", "event_type": "post", "event_time": 1763900000000,
             "platform": "instagram", "brand": "Nordwind", "author_handle": "@anna",
             "author_is_brand": False, "post_id": "p-1", "parent_post_id": None,
             "aimed_at_brand": True, "text": "Lieferung kommt nie an 😡", "lang": "de",
             "reach": 1200, "followers": 300, "mentioned_brands": ["Nordwind"],
             "hashtags": ["fail"], "url": None}


def test_wire_format_header_is_magic_zero_and_big_endian_id():
    codec = AvroCodec(FileSchemaRegistry())
    value = codec.encode(SOCIAL, SOCIAL_V1)
    assert value[0] == 0
    assert struct.unpack(">I", value[1:5])[0] == 1  # SocialEvent v1 has id 1
    # The body is plain schemaless Avro of the registered schema.
    schema = json.load(open(FileSchemaRegistry().dirs[0] / "social_event.v1.avsc"))
    body = fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(schema))
    assert body["text"] == "Lieferung kommt nie an 😡"


def test_round_trip_keeps_every_field():
    codec = AvroCodec(FileSchemaRegistry())
    record, schema_id = codec.decode(codec.encode(SOCIAL, SOCIAL_V1), SOCIAL)
    assert schema_id == 1
    assert record == SOCIAL_V1


def test_newer_writer_older_reader_keeps_unknown_fields_under_extra():
    registry = FileSchemaRegistry([V2_DIR])
    writer = AvroCodec(registry)                      # newest: v2 (id 101)
    reader = AvroCodec(registry, reader_ids={SOCIAL: 1})  # a consumer built for v1
    v2 = dict(SOCIAL_V1, campaign_id="bf-2026", is_sponsored=True)
    value = writer.encode(SOCIAL, v2)
    assert struct.unpack(">I", value[1:5])[0] == 101
    record, schema_id = reader.decode(value, SOCIAL)
    assert schema_id == 101
    assert record["_extra"] == {"campaign_id": "bf-2026", "is_sponsored": True}
    assert {k: v for k, v in record.items() if k != "_extra"} == SOCIAL_V1


def test_older_writer_newer_reader_fills_defaults():
    registry = FileSchemaRegistry([V2_DIR])
    old_writer = AvroCodec(FileSchemaRegistry())      # only knows v1
    value = old_writer.encode(SOCIAL, SOCIAL_V1)
    record, schema_id = AvroCodec(registry).decode(value, SOCIAL)
    assert schema_id == 1
    assert record["campaign_id"] is None and record["is_sponsored"] is False
    assert "_extra" not in record
    assert record["text"] == SOCIAL_V1["text"]


def test_unknown_schema_id():
    codec = AvroCodec(FileSchemaRegistry())
    value = b"\x00" + struct.pack(">I", 9999) + b"\x02"
    with pytest.raises(DecodeError) as err:
        codec.decode(value, SOCIAL)
    assert err.value.reason == "unknown_schema_id" and err.value.schema_id == 9999


def test_other_event_kind_on_topic_is_incompatible():
    codec = AvroCodec(FileSchemaRegistry())
    survey = {"event_id": "v", "event_time": 1, "brand": "b", "survey_id": "s",
              "survey_type": "NPS", "score": 3}
    with pytest.raises(DecodeError) as err:
        codec.decode(codec.encode(SURVEY, survey), WEB)
    assert err.value.reason == "incompatible_schema"


@pytest.mark.parametrize("value", [b"\x00\x00\x00\x00\x01", b"\x00\x00\x00\x00\x01\x02s",
                                   b"\x00\x00"])
def test_truncated_bodies_are_undecodable(value):
    with pytest.raises(DecodeError) as err:
        AvroCodec(FileSchemaRegistry()).decode(value, SOCIAL)
    assert err.value.reason == "undecodable"


def test_json_event_is_checked_against_the_same_schema():
    reader = JsonEventReader(AvroCodec(FileSchemaRegistry()))
    record, schema_id = reader.read(json.dumps({
        "event_id": "v-1", "event_time": "2026-11-23T10:00:00+01:00", "brand": "Kaffeeklatsch",
        "survey_id": "nps-q4", "survey_type": "NPS", "score": 9, "shoe_size": 44}), SURVEY)
    assert schema_id == 3
    assert record["event_time"] == 1795424400000  # 09:00 UTC
    assert record["comment"] is None                 # default filled
    assert record["_extra"] == {"shoe_size": 44}     # unknown field kept


@pytest.mark.parametrize("payload,reason", [
    ('{"event_id": "x", ', "invalid_json"),
    ('[1, 2]', "invalid_json"),
    ('{"event_time": 1, "brand": "b", "survey_id": "s", "survey_type": "NPS", "score": 1}',
     "missing_field"),
    ('{"event_id": "x", "event_time": 1, "brand": "b", "survey_id": "s", "survey_type": "NPS",'
     ' "score": "nine"}', "schema_violation"),
    ('{"event_id": "x", "event_time": "yesterday", "brand": "b", "survey_id": "s",'
     ' "survey_type": "NPS", "score": 1}', "schema_violation"),
])
def test_json_failures_have_their_reason(payload, reason):
    reader = JsonEventReader(AvroCodec(FileSchemaRegistry()))
    with pytest.raises(DecodeError) as err:
        reader.read(payload.encode(), SURVEY)
    assert err.value.reason == reason


def test_timestamps_in_json():
    assert parse_timestamp_ms("1970-01-01T00:00:01Z") == 1000
    assert parse_timestamp_ms(1234) == 1234
    with pytest.raises(ValueError):
        parse_timestamp_ms(True)


def test_file_registry_rejects_a_reused_id(tmp_path):
    (tmp_path / "x.avsc").write_text(json.dumps(
        {"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]}))
    (tmp_path / "registry.json").write_text(json.dumps(
        {"schemas": [{"id": 1, "subject": "X", "version": 1, "file": "x.avsc"}]}))
    with pytest.raises(RegistryError, match="used twice"):
        FileSchemaRegistry([tmp_path]).schema_by_id(1)


def test_registry_url_forms(tmp_path):
    assert isinstance(registry_from_url(""), FileSchemaRegistry)
    assert registry_from_url(f"file:{V2_DIR}").latest(SOCIAL)[0] == 101
    with pytest.raises(RegistryError):
        registry_from_url(str(tmp_path))  # no registry.json


def test_codec_survives_pickling():
    import pickle

    codec = pickle.loads(pickle.dumps(AvroCodec(FileSchemaRegistry([V2_DIR]), {SOCIAL: 1})))
    assert codec.reader_schema(SOCIAL)[0] == 1
