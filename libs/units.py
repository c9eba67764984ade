"""Parsing of human-written durations and sizes, shared by config and pipelines."""

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: int | float | str) -> float:
    """Return seconds for a number of seconds or a duration such as "1h30m" or "90s".

    Raises ValueError naming the value when it is neither.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use seconds or e.g. '10m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return float(value)
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(
            f"invalid duration {value!r}: use seconds or a number with a unit "
            "(ms, s, m, h, d), e.g. '90s', '10m' or '1h30m'"
        )
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def parse_size(value: int | str) -> int:
    """Return bytes for a byte count or a size such as "512m", "1g" or "64KiB"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: use bytes or e.g. '512m'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return value
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(
            f"invalid size {value!r}: use bytes or a number with k, m, g or t "
            "(powers of 1024), e.g. '512m'"
        )
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])
