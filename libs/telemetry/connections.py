"""Counts of NATS disconnects and reconnects in this process, by service.

`libs.events.connection` records here from its connection callbacks. The
module imports nothing from `libs`, so that the events package can import it
without a cycle.
"""

import threading


class NatsConnectionCounts:
    """Disconnects and reconnects of this process's NATS clients, by service.

    `libs.events.connection` records here; each service registry reads the
    counts of its own service kind through `NatsCollector`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def record(self, client_name: str, event: str) -> None:
        """Count one `event` ("reconnect" or "disconnect") of a client."""
        key = (client_kind(client_name), event)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def count(self, kind: str, event: str) -> int:
        """Return how many `event`s clients of service `kind` had."""
        with self._lock:
            return self._counts.get((kind, event), 0)


NATS_CONNECTIONS = NatsConnectionCounts()


def client_kind(client_name: str) -> str:
    """Return the service of a NATS client name: "stasis-executor-a-1" → "executor"."""
    stem = client_name.removeprefix("stasis-")
    return stem.split("-", 1)[0] or "other"
