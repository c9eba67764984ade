"""Draining an executor on SIGTERM: what the executor's `stop()` needs.

A draining executor pulls no new order, gives its running runs up to the drain
timeout to finish, and hands back the orders of the runs still going, so that
another executor starts them again as the next attempt.
"""

from libs.config import Config


def drain_timeout(config: Config) -> float:
    """Return `executor.drain_timeout` in seconds (never negative)."""
    return max(0.0, float(config.executor.drain_timeout))
