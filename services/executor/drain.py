"""Draining an executor on SIGTERM: what the executor's `stop()` needs.

A draining executor pulls no new order, gives its running runs up to the drain
timeout to finish, and hands back the orders of the runs still going, so that
another executor starts them again as the next attempt.
"""

import asyncio
import inspect

from nats.aio.msg import Msg

from libs.config import Config


def drain_timeout(config: Config) -> float:
    """Return `executor.drain_timeout` in seconds (never negative)."""
    return max(0.0, float(config.executor.drain_timeout))


def order_of(task: asyncio.Task[None]) -> tuple[Msg, str] | None:
    """Return the dispatch order and job id that a run task is handling.

    The run task runs `Executor._handle(msg, job_id, run_id)`; its arguments
    are read from the coroutine's frame. Returns None once the coroutine has
    ended.
    """
    # TODO: read them from a run-id-keyed dict once `Executor._start_run`
    # records each order there; the frame is the only place they are kept now.
    coroutine = task.get_coro()
    if not inspect.iscoroutine(coroutine):
        return None
    local_vars = inspect.getcoroutinelocals(coroutine)
    msg, job_id = local_vars.get("msg"), local_vars.get("job_id")
    if not isinstance(msg, Msg) or not isinstance(job_id, str):
        return None
    return msg, job_id
