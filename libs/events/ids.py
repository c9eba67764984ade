"""Sortable identifiers for jobs and runs, safe as NATS subject tokens."""

import os
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id() -> str:
    """Return a 26-character ULID in lower-case Crockford base32.

    The first 10 characters encode the millisecond timestamp, so ids sort by
    creation time; the rest is 80 random bits.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_valid_id(value: str) -> bool:
    """Tell whether `value` has the shape of an id made by `new_id`."""
    return len(value) == 26 and all(c in _CROCKFORD for c in value)
