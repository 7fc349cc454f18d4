"""Semantic checks on decoded events: what a schema cannot say.

Each rule raises :class:`~cx360.schemas.codec.DecodeError` with the dead-letter reason
``missing_field`` (a required value that is empty), ``invalid_value`` (outside its domain,
e.g. NPS 11, a negative order value, an unknown event type, a NUL or a lone surrogate)
or ``future_timestamp`` (stamped further ahead than the allowed clock skew: accepting it
would push the watermark ahead and make every later event look late).
"""
from __future__ import annotations

import math
import re

from cx360.schemas.codec import DecodeError

SOCIAL_TYPES = frozenset({"post", "comment", "mention", "reply", "like", "share"})
WEB_TYPES = frozenset({"session_start", "page_view", "login", "product_view", "add_to_cart",
                       "order", "account_link"})
SURVEY_SCALES = {"NPS": (0, 10), "CSAT": (1, 5), "CES": (1, 7)}
#: Types that refer to another post.
SOCIAL_NEEDS_PARENT = frozenset({"comment", "reply", "like", "share"})

#: Events before this instant (2000-01-01) are treated as broken clocks.
MIN_EVENT_TIME_MS = 946_684_800_000
DEFAULT_MAX_FUTURE_MS = 15 * 60 * 1000


def _required(record: dict, *names: str) -> None:
    for name in names:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DecodeError("missing_field", f"required field {name!r} is empty")


def _non_negative(record: dict, *names: str) -> None:
    for name in names:
        value = record.get(name)
        if value is not None and value < 0:
            raise DecodeError("invalid_value", f"{name} must not be negative, got {value}")


def _check_time(record: dict, now_ms: int, max_future_ms: int) -> None:
    event_time = record["event_time"]
    if event_time < MIN_EVENT_TIME_MS:
        raise DecodeError("invalid_value", f"event_time {event_time} is before 2000-01-01")
    if event_time > now_ms + max_future_ms:
        ahead_min = (event_time - now_ms) / 60000
        raise DecodeError("future_timestamp",
                          f"event_time is {ahead_min:.0f} min in the future "
                          f"(allowed skew {max_future_ms / 60000:.0f} min)")


def validate_social(record: dict, now_ms: int, max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> None:
    _required(record, "event_id", "platform", "author_handle", "post_id")
    if record["event_type"] not in SOCIAL_TYPES:
        raise DecodeError("invalid_value", f"unknown social event_type {record['event_type']!r}")
    if record["event_type"] in SOCIAL_NEEDS_PARENT:
        _required(record, "parent_post_id")
    if record["event_type"] == "reply" and not record.get("author_is_brand"):
        raise DecodeError("invalid_value", "a reply must come from a brand account")
    _non_negative(record, "reach", "followers")
    _check_time(record, now_ms, max_future_ms)


def validate_web(record: dict, now_ms: int, max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> None:
    _required(record, "event_id", "brand", "session_id", "cookie_id")
    event_type = record["event_type"]
    if event_type not in WEB_TYPES:
        raise DecodeError("invalid_value", f"unknown web event_type {event_type!r}")
    if event_type == "order":
        _required(record, "order_id")
        if record.get("order_value") is None:
            raise DecodeError("missing_field", "an order needs order_value")
        if not math.isfinite(record["order_value"]):  # JSON accepts NaN and Infinity
            raise DecodeError("invalid_value", f"order_value is {record['order_value']}")
    if event_type == "login":
        _required(record, "account_id")
    if event_type == "account_link":
        _required(record, "account_id", "social_handle", "social_platform")
    _non_negative(record, "order_value")
    _check_time(record, now_ms, max_future_ms)


def validate_survey(record: dict, now_ms: int, max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> None:
    _required(record, "event_id", "brand", "survey_id")
    scale = SURVEY_SCALES.get(record["survey_type"])
    if scale is None:
        raise DecodeError("invalid_value", f"unknown survey_type {record['survey_type']!r}")
    low, high = scale
    if not low <= record["score"] <= high:
        raise DecodeError("invalid_value",
                          f"{record['survey_type']} score must be {low}-{high}, "
                          f"got {record['score']}")
    _check_time(record, now_ms, max_future_ms)


VALIDATORS = {"social": validate_social, "web": validate_web, "survey": validate_survey}


#: Characters no warehouse can store: NUL (PostgreSQL TEXT cannot hold it) and lone UTF-16
#: surrogates (not encodable as UTF-8 at all; a JSON escape such as "\\ud800" makes one).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable_text(record: dict) -> None:
    """Both kinds of character are valid in a decoded event, but one such event would fail
    every write of its batch, again on every retry. No social, web or survey field means
    anything by them, so the event is a dead letter (its bytes kept for replay)."""
    for name, value in record.items():
        for item in value if isinstance(value, list) else (value,):
            found = UNSTORABLE.search(item) if isinstance(item, str) else None
            if found:
                char = found.group()
                what = ("a NUL character (U+0000)" if char == "\x00"
                        else f"a lone surrogate (U+{ord(char):04X}), not Unicode text")
                raise DecodeError("invalid_value", f"{name} contains {what}")


def validate_event(role: str, record: dict, now_ms: int,
                   max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> None:
    """Raise DecodeError if ``record`` (a decoded ``role`` event) is not acceptable."""
    VALIDATORS[role](record, now_ms, max_future_ms)
    _storable_text(record)
