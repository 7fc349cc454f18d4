"""Windowed event counts: the first warehouse table (the KPI catalogue builds on the same
pattern). Counts are mergeable components: partial counts from any split of the data (bundles,
micro-batches) add up to the count over all of it."""
from __future__ import annotations

from typing import Iterable

NONE = "(none)"
UNKNOWN = "(unknown)"


def parse_duration(text: str) -> int:
    """Seconds in '90s', '15m', '1h', '1d' (or a plain number of seconds)."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        value, unit = text[:-1], units[text[-1]]
    else:
        value, unit = text, 1
    try:
        seconds = int(float(value) * unit)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 30m, 1h, 1d)") from None
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def window_start_ms(event_time_ms: int, size_s: int) -> int:
    size_ms = size_s * 1000
    return event_time_ms - event_time_ms % size_ms


def dimensions(event: dict) -> tuple[str, str, str]:
    """(event_type, brand, channel) of an event for the event_counts table."""
    role = event["_role"]
    if role == "social":
        return event["event_type"], event.get("brand") or NONE, event["platform"]
    if role == "web":
        return event["event_type"], event["brand"], event.get("device") or UNKNOWN
    return event["survey_type"], event["brand"], event.get("channel") or UNKNOWN


def count_events(events: Iterable[dict], window_sizes: Iterable[int]) -> list[dict]:
    """event_counts rows (one per window and dimensions) for ``events``."""
    sizes = list(window_sizes)
    counts: dict[tuple, int] = {}
    for event in events:
        event_type, brand, channel = dimensions(event)
        base = (event["_role"], event["_topic"], event_type, brand, channel)
        for size in sizes:
            key = (size, window_start_ms(event["event_time"], size)) + base
            counts[key] = counts.get(key, 0) + 1
    return [{"window_seconds": size, "window_start": start, "window_end": start + size * 1000,
             "event_kind": kind, "topic": topic, "event_type": event_type, "brand": brand,
             "channel": channel, "events": n}
            for (size, start, kind, topic, event_type, brand, channel), n in counts.items()]
