"""Semantic validation: each impossible value gets its dead-letter reason."""
import pytest

from cx360.schemas.codec import DecodeError
from cx360.transforms.validate import validate_event

NOW = 1_795_000_000_000  # 2026-11-18
HOUR = 3_600_000


def survey(**kw):
    return dict({"event_id": "v", "event_time": NOW - HOUR, "brand": "b", "survey_id": "s",
                 "survey_type": "NPS", "score": 7}, **kw)


def web(**kw):
    return dict({"event_id": "w", "event_type": "page_view", "event_time": NOW, "brand": "b",
                 "session_id": "s", "cookie_id": "c", "order_value": None, "order_id": None,
                 "account_id": None}, **kw)


def social(**kw):
    return dict({"event_id": "p", "event_type": "post", "event_time": NOW, "platform": "x",
                 "author_handle": "@a", "post_id": "p1", "parent_post_id": None,
                 "author_is_brand": False, "reach": None, "followers": None}, **kw)


@pytest.mark.parametrize("kind,score,ok", [
    ("NPS", 0, True), ("NPS", 10, True), ("NPS", 11, False), ("NPS", -1, False),
    ("CSAT", 1, True), ("CSAT", 5, True), ("CSAT", 0, False), ("CSAT", 6, False),
    ("CES", 1, True), ("CES", 7, True), ("CES", 8, False),
])
def test_survey_scales(kind, score, ok):
    record = survey(survey_type=kind, score=score)
    if ok:
        validate_event("survey", record, NOW)
    else:
        with pytest.raises(DecodeError) as err:
            validate_event("survey", record, NOW)
        assert err.value.reason == "invalid_value"


@pytest.mark.parametrize("role,record,reason", [
    ("survey", survey(survey_type="NPX"), "invalid_value"),
    ("survey", survey(event_id=" "), "missing_field"),
    ("survey", survey(event_time=NOW + 2 * 86_400_000), "future_timestamp"),
    ("survey", survey(event_time=5), "invalid_value"),
    ("web", web(event_type="order", order_id="o1"), "missing_field"),
    ("web", web(event_type="order", order_id="o1", order_value=-3.0), "invalid_value"),
    ("web", web(event_type="order", order_id="o1", order_value=float("inf")), "invalid_value"),
    ("web", web(event_type="order", order_id="o1", order_value=float("nan")), "invalid_value"),
    ("web", web(event_type="login"), "missing_field"),
    ("web", web(event_type="teleport"), "invalid_value"),
    ("social", social(event_type="reply", parent_post_id="p0"), "invalid_value"),
    ("social", social(event_type="comment"), "missing_field"),
    ("social", social(reach=-1), "invalid_value"),
    ("social", social(text="bad\x00"), "invalid_value"),              # PostgreSQL cannot store it
    ("social", social(hashtags=["ok", "b\x00d"]), "invalid_value"),
    ("web", web(page_url="/p\x00"), "invalid_value"),
    ("survey", survey(comment="gut \ud83d"), "invalid_value"),  # half an emoji: no UTF-8
])
def test_reasons(role, record, reason):
    with pytest.raises(DecodeError) as err:
        validate_event(role, record, NOW)
    assert err.value.reason == reason


def test_allowed_clock_skew_is_configurable():
    record = survey(event_time=NOW + 10 * 60_000)  # 10 minutes ahead
    validate_event("survey", record, NOW)            # default skew 15 min
    with pytest.raises(DecodeError):
        validate_event("survey", record, NOW, max_future_ms=5 * 60_000)


def test_other_control_characters_and_whole_emoji_are_text():
    validate_event("social", social(text="tab\there\nline\x01 \U0001F600", hashtags=["a"]),
                   NOW)


def test_the_reason_names_the_field_and_the_character():
    with pytest.raises(DecodeError) as err:
        validate_event("survey", survey(comment="gut \ud83d"), NOW)
    assert err.value.detail == "comment contains a lone surrogate (U+D83D), not Unicode text"
