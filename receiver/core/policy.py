"""Local limits from the technician's config that even a valid signed message cannot pass:
allowed media hosts, quiet hours, volume caps (docs/security.md)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from receiver.core.settings import Settings
from receiver.core.urls import UrlRefused, check_url
from receiver.core.vocabulary import Priority


def url_allowed(settings: Settings, url: str) -> bool:
    try:
        check_url(url, settings.allowed_schemes, settings.allowed_hosts)
    except UrlRefused:
        return False
    return True


def in_quiet_hours(settings: Settings, utc: float) -> bool:
    """Whether ``utc`` falls in a quiet period (local time; a period may wrap midnight)."""
    if not settings.quiet_hours:
        return False
    local = datetime.fromtimestamp(utc, ZoneInfo(settings.timezone))
    minute = local.hour * 60 + local.minute
    for start, end in settings.quiet_hours:
        if start <= end:
            if start <= minute < end:
                return True
        elif minute >= start or minute < end:
            return True
    return False


def volume_for(
    settings: Settings, priority: Priority, requested: int | None, device_volume: int
) -> int:
    """Emergencies use the emergency level (a request can only lower it); else the cap holds."""
    if priority == "emergency":
        wanted = settings.emergency_volume if requested is None else requested
        return min(wanted, settings.emergency_volume)
    wanted = device_volume if requested is None else requested
    return min(wanted, settings.max_volume)
