"""The current time somewhere, because a model has no clock and guesses badly.

Time zones are IANA names resolved by `zoneinfo` (system tzdata or the `tzdata` package; UTC
needs neither); an unknown name is a `ToolError` that says what a valid one looks like.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from background.tools.base import Tool, ToolError


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ClockTool(Tool):
    """Current date and time in an IANA time zone (UTC by default)."""

    name = "clock"
    description = ("Current date and time in a time zone given by its IANA name, "
                   "for example Europe/Paris, Asia/Tokyo or America/New_York; UTC if omitted.")
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA time zone name; default UTC",
                "pattern": "^[A-Za-z][A-Za-z0-9_+\\-]{0,29}(/[A-Za-z0-9_+\\-]{1,30}){0,2}$",
            },
        },
        "additionalProperties": False,
    }

    def __init__(self, timeout_s: float = 2.0, now: Callable[[], datetime] = _utc_now) -> None:
        self.timeout_s = timeout_s
        self._now = now  # injectable so that tests can pin the instant

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        name = (args.get("timezone") or "UTC").strip()
        if name.upper() == "UTC":  # works even where the system has no tzdata
            name = "UTC"
        try:
            zone: tzinfo = timezone.utc if name == "UTC" else ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ToolError(f"unknown time zone {name!r}; use an IANA name such as "
                            "'Europe/Paris', 'Asia/Tokyo' or 'UTC'") from None
        local = self._now().astimezone(zone)
        offset = local.strftime("%z")
        return {
            "timezone": name,
            "iso": local.isoformat(timespec="seconds"),
            "date": local.date().isoformat(),
            "time": local.strftime("%H:%M:%S"),
            "weekday": local.strftime("%A"),
            "utc_offset": f"{offset[:3]}:{offset[3:]}",
            "abbreviation": local.tzname() or "",
            "unix": round(local.timestamp(), 3),
        }
