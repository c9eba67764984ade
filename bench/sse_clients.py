"""Many SSE clients of one job's stream, run as a separate process.

Run by `bench.logs` as `python -m bench.sse_clients URL JOB_ID CLIENTS SECONDS`.
Each client reads the job's stream until `end` and records, for every line
`t <n> <EPOCHREALTIME>` the step printed, the seconds from the print to the
receipt. Prints one JSON object: when the last client connected, the latency
of each line, and the line count and end of each client. Every client stops
after SECONDS, so the process ends by itself.
"""

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

from services.cli.client import parse_sse


async def read_stream(
    session: aiohttp.ClientSession, url: str, latencies: list[tuple[float, float]]
) -> dict[str, Any]:
    """Read one SSE stream to `end`; return when it connected and what it got."""
    seen: set[int] = set()
    outcome: dict[str, Any] = {"connected_at": None, "ended": False, "error": ""}
    try:
        async with session.get(url) as resp:
            outcome["connected_at"] = time.time()
            if resp.status != 200:
                outcome["error"] = f"HTTP {resp.status}"
                return outcome
            async for event in parse_sse(resp.content):
                if event.event == "end":
                    outcome["ended"] = True
                    break
                if event.event != "log":
                    continue
                received = time.time()
                chunk = json.loads(event.data)
                for line in chunk["data"].splitlines():
                    fields = line.split()
                    if len(fields) == 3 and fields[0] == "t":
                        seen.add(int(fields[1]))
                        printed = float(fields[2])
                        latencies.append((printed, received - printed))
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome["error"] = repr(exc)
    outcome["lines"] = len(seen)
    return outcome


async def main(url: str, job_id: str, clients: int, seconds: float) -> None:
    """Start `clients` readers of the job's stream and print the JSON summary."""
    latencies: list[tuple[float, float]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=seconds)
    stream_url = f"{url}/api/v1/jobs/{job_id}/stream"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        outcomes = await asyncio.gather(
            *(read_stream(session, stream_url, latencies) for _ in range(clients))
        )
    connected = [o["connected_at"] for o in outcomes if o["connected_at"]]
    summary = {
        "all_connected_at": max(connected) if connected else None,
        "latencies": latencies,
        "clients": outcomes,
    }
    json.dump(summary, sys.stdout)


if __name__ == "__main__":
    url_arg, job_arg, clients_arg, seconds_arg = sys.argv[1:5]
    asyncio.run(main(url_arg, job_arg, int(clients_arg), float(seconds_arg)))
