"""Moments as the project writes them: ISO 8601 in UTC with milliseconds and a `Z` (logs, records, webhooks)."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return iso_utc(datetime.now(timezone.utc))
