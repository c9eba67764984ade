"""The executor service: pulls dispatch orders while it has a free slot.

Each free slot asks the pool's shared pull consumer for one order, so the
number of running jobs never exceeds `executor.max_concurrent_jobs` and a busy
executor leaves orders to others. While a run goes on, its order is kept with
progress acks; it is acked only when the run has a recorded outcome, so an
executor that dies mid-run gives its order back after the ack wait.
"""

import asyncio
import contextlib
import logging
import time

import aiodocker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.config import Config
from libs.events import (
    AnyEvent,
    AttemptLost,
    CancelRequested,
    JobState,
    RunFinished,
    RunStarted,
    StreamConflict,
    decode_dispatch,
    decode_event,
    fold,
    subjects,
)
from libs.events.fold import RunState
from libs.events.journal import append, read_job
from libs.events.streams import dispatch_consumer_config, ensure_consumer
from libs.secrets import JobSecrets, SecretsUnavailable
from libs.telemetry.logformat import job_fields
from libs.telemetry.metrics import ExecutorMetrics
from libs.telemetry.service import ServiceTelemetry
from libs.telemetry.tracing import inject_trace_context, job_span
from services.runtime import ServiceState, connect_jetstream, open_vault

from .docker_runner import DockerRunner, StopRequest
from .drain import drain_timeout
from .heartbeat import Heartbeat
from .job_runner import JobRunner, RunResult

log = logging.getLogger(__name__)


class Executor:
    """Runs dispatched runs in Docker; see the module docstring."""

    def __init__(
        self,
        config: Config,
        nats_url: str | None = None,
        labels: tuple[str, ...] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.state = ServiceState.CREATED
        self._nats_url = nats_url
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._docker: aiodocker.Docker | None = None
        self._slots = asyncio.Semaphore(config.executor.max_concurrent_jobs)
        self._puller: asyncio.Task[None] | None = None
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, StopRequest] = {}
        self._orders: dict[str, tuple[Msg, str]] = {}
        """The dispatch order and job id of each running run, by run id."""
        self._attempts: dict[str, int] = {}
        """The attempt this executor runs of each running run."""
        self._finishing: set[str] = set()
        """Runs whose outcome this executor is appending now."""
        self._superseded: set[str] = set()
        """Runs whose attempt here was declared lost by another executor."""
        cfg = config.executor
        if labels is None:
            labels = tuple(cfg.labels)
        self._heartbeat = Heartbeat(
            cfg.id,
            cfg.pool,
            labels,
            cfg.max_concurrent_jobs,
            lambda: len(self._runs),
            interval=float(cfg.heartbeat_interval),
        )
        self.telemetry = ServiceTelemetry(config.telemetry, "executor", registry)
        self.metrics = ExecutorMetrics(self.telemetry.registry)
        self.metrics.track_slots(lambda: len(self._runs), cfg.max_concurrent_jobs)

    @property
    def busy_slots(self) -> int:
        """How many runs this executor is running now."""
        return len(self._runs)

    async def start(self) -> None:
        """Connect to NATS and Docker, then start pulling orders."""
        self.state = ServiceState.STARTING
        await self.telemetry.start()
        cfg = self.config.executor
        self._docker = aiodocker.Docker(url=cfg.docker_url)
        try:
            await self._docker.version()
        except (aiodocker.DockerError, OSError) as exc:
            await self._docker.close()
            raise RuntimeError(
                f"executor {cfg.id} cannot reach the Docker daemon "
                f"({cfg.docker_url or 'DOCKER_HOST or /var/run/docker.sock'}): {exc}; "
                "start dockerd or set executor.docker_url"
            ) from exc
        self._nc, self._js = await connect_jetstream(
            self.config, f"stasis-executor-{cfg.id}", self._nats_url
        )
        self._vault = await open_vault(self._js, self.config)
        await ensure_consumer(
            self._js,
            subjects.DISPATCH_STREAM,
            dispatch_consumer_config(cfg.pool, float(self.config.nats.ack_wait)),
        )
        await self._heartbeat.start(self._js, self.config.nats.replicas)
        self._cancel_sub = await self._nc.subscribe(
            f"{subjects.JOBS_PREFIX}.*", cb=self._on_job_event
        )
        self._puller = asyncio.create_task(self._pull_loop(), name="executor-pull")
        self.state = ServiceState.RUNNING
        log.info(
            "executor %s started: pool %s, %d slots",
            cfg.id,
            cfg.pool,
            cfg.max_concurrent_jobs,
        )

    async def stop(self) -> None:
        """Drain: stop pulling, let runs finish, hand back the rest, disconnect.

        Running runs get `executor.drain_timeout` seconds (30 by default) to
        record their outcome. A run still going then is stopped without an
        outcome: its containers are removed and its order is naked, so another
        executor records the attempt as lost and starts the next one. A cancel
        that arrives during the drain still stops its run.
        """
        self.state = ServiceState.STOPPING
        # Deleting the heartbeat first tells the scheduler to send no more here.
        await self._heartbeat.stop()
        if self._puller is not None:
            self._puller.cancel()
            # A cancel can be lost inside nats-py's fetch (asyncio.wait_for in
            # Python 3.11); a puller still pending is cancelled again below.
            _, pending = await asyncio.wait({self._puller}, timeout=5.0)
            if pending:
                log.warning("executor pull loop ignored cancel; cancelling again")
                self._puller.cancel()
        unfinished = await self._drain_runs(drain_timeout(self.config))
        for run_id, task in unfinished.items():
            await self._hand_back(run_id, task)
        if self._nc is not None:
            await self._nc.close()
        if self._docker is not None:
            await self._docker.close()
        await self.telemetry.stop()
        self.state = ServiceState.STOPPED
        log.info("executor %s stopped", self.config.executor.id)

    async def _drain_runs(self, timeout: float) -> dict[str, asyncio.Task[None]]:
        """Wait up to `timeout` seconds for the running runs; return the rest."""
        if not self._runs:
            return {}
        log.info(
            "executor %s draining: waiting up to %gs for %d running runs",
            self.config.executor.id,
            timeout,
            len(self._runs),
        )
        if timeout > 0:
            await asyncio.wait(list(self._runs.values()), timeout=timeout)
        return {run_id: t for run_id, t in self._runs.items() if not t.done()}

    async def _hand_back(self, run_id: str, task: asyncio.Task[None]) -> None:
        """Stop a run that outlived the drain and give its order back to the pool."""
        handled = self._orders.get(run_id)
        secrets = None
        if handled is not None:
            # The run's own clean-up purges the job's secrets; the next
            # attempt on another executor needs them, so they are put back.
            with contextlib.suppress(SecretsUnavailable):
                secrets = await self._vault.get(handled[1])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if handled is None:
            log.warning(
                "run %s outlived the drain; its order comes back after the ack wait",
                run_id,
            )
            return
        msg, job_id = handled
        if secrets is not None:
            await self._vault.put(job_id, secrets)
        try:
            await msg.nak()
        except Exception as exc:
            log.warning(
                "handing back the order of run %s failed (%s); it comes back "
                "after the ack wait",
                run_id,
                exc,
            )
            return
        log.warning(
            "run %s of job %s outlived the drain; its order was handed back",
            run_id,
            job_id,
        )

    async def _pull_loop(self) -> None:
        assert self._js is not None
        pool = self.config.executor.pool
        sub = await self._js.pull_subscribe_bind(
            durable=dispatch_consumer_config(pool, 0).durable_name,
            stream=subjects.DISPATCH_STREAM,
        )
        while True:
            await self._slots.acquire()
            try:
                messages = await sub.fetch(1, timeout=5.0)
            except NatsTimeoutError:
                self._slots.release()
                continue
            except Exception:
                self._slots.release()
                log.exception("fetching dispatch orders failed; retrying in 1s")
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                self._start_run(msg)

    def _start_run(self, msg: Msg) -> None:
        order = decode_dispatch(msg.data)
        task = asyncio.create_task(self._handle(msg, order.job_id, order.run_id))
        self._runs[order.run_id] = task
        self._orders[order.run_id] = (msg, order.job_id)

        def finished(_: asyncio.Task[None]) -> None:
            self._runs.pop(order.run_id, None)
            self._orders.pop(order.run_id, None)
            self._stops.pop(order.run_id, None)
            self._attempts.pop(order.run_id, None)
            self._superseded.discard(order.run_id)
            self._finishing.discard(order.run_id)
            self._slots.release()

        task.add_done_callback(finished)

    async def _handle(self, msg: Msg, job_id: str, run_id: str) -> None:
        if await self._heartbeat.declines(msg):
            return
        delivered = msg.metadata.num_delivered
        if delivered > 1:
            self.metrics.redeliveries.inc()
        keeper = asyncio.create_task(self._keep_alive(msg))
        try:
            with job_span(
                "executor run",
                job_id,
                run_id,
                parent_headers=msg.headers,
                executor_id=self.config.executor.id,
                delivery=delivered,
            ):
                await self._claim_and_run(msg, job_id, run_id)
            await msg.ack()
        except Exception:
            # The order is not acked: it comes back after the ack wait.
            log.exception(
                "handling run %s of job %s failed",
                run_id,
                job_id,
                extra=job_fields(job_id, run_id),
            )
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_alive(self, msg: Msg) -> None:
        interval = max(0.5, float(self.config.nats.ack_wait) / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:  # the next interval tries again
                log.warning("progress ack failed: %s", exc)

    async def _claim_and_run(self, msg: Msg, job_id: str, run_id: str) -> None:
        assert self._js is not None
        for _ in range(5):
            stored = await read_job(self._js, job_id)
            job = fold(s.event for s in stored)
            last = stored[-1].seq if stored else 0
            run = job.run(run_id) if job else None
            if job is None or run is None or run.finished:
                log.info(
                    "order for run %s needs no action (%s)",
                    run_id,
                    "finished" if run else "unknown run",
                )
                return
            if run.status == "running" and msg.metadata.num_delivered <= 1:
                log.info("duplicate order for running run %s ignored", run_id)
                return
            if run.status == "running":
                try:
                    last = await self._record_lost_attempt(job, run, last)
                except StreamConflict:
                    continue
                if last == 0:
                    return
            attempt = run.attempt + 1
            started = RunStarted(
                job_id=job_id,
                run_id=run_id,
                executor_id=self.config.executor.id,
                attempt=attempt,
            )
            try:
                await append(self._js, started, expected_last_seq=last)
            except StreamConflict:
                continue
            await self._execute(job, run_id, attempt, run.cancel_requested)
            return
        log.warning(
            "run %s kept changing while claiming it; order left for later", run_id
        )
        raise StreamConflict(f"could not claim run {run_id}")

    async def _record_lost_attempt(
        self, job: JobState, run: RunState, last: int
    ) -> int:
        """Record that the run's current attempt was lost and clean up after it.

        The order came back while the run is `running`, so the executor that
        held it stopped sending progress acks. Returns the new last sequence,
        or 0 when the run has used up `executor.max_run_attempts` and was failed.
        """
        assert self._js is not None and self._docker is not None
        lost = AttemptLost(
            job_id=job.job_id,
            run_id=run.run_id,
            attempt=run.attempt,
            executor_id=run.executor_id or "",
            reason="its executor stopped acking the order for longer than the ack wait",
        )
        last = await append(self._js, lost, expected_last_seq=last)
        log.warning(
            "attempt %d of run %s (executor %s) was lost",
            run.attempt,
            run.run_id,
            run.executor_id,
        )
        # Only this host's Docker is reachable; a lost executor on another host
        # leaves its containers to that host's next executor or to an operator.
        await DockerRunner(self._docker, self.config.executor).remove_run_resources(
            run.run_id
        )
        if run.attempt < self.config.executor.max_run_attempts:
            return last
        await append(
            self._js,
            RunFinished(
                job_id=job.job_id,
                run_id=run.run_id,
                outcome="failed",
                reason=(
                    f"lost its executor {run.attempt} times; raise "
                    "executor.max_run_attempts to try more"
                ),
            ),
            msg_id=f"{run.run_id}:finished",
            expected_last_seq=last,
        )
        self.metrics.runs_finished.labels("failed").inc()
        return 0

    async def _execute(
        self, job: JobState, run_id: str, attempt: int, cancel_requested: bool
    ) -> None:
        assert self._js is not None and self._docker is not None
        stop = StopRequest()
        if cancel_requested:
            stop.requested.set()
        self._stops[run_id] = stop
        self._attempts[run_id] = attempt
        started = time.monotonic()
        log.info("run %s of job %s started (attempt %d)", run_id, job.job_id, attempt)

        async def emit(event: AnyEvent, key: str) -> None:
            assert self._js is not None
            await append(
                self._js,
                event,
                msg_id=f"{run_id}:{attempt}:{key}",
                headers=inject_trace_context({}),
            )
            self.metrics.observe_event(event)

        try:
            secrets = await self._secrets_of(job)
        except SecretsUnavailable as exc:
            await self._finish(job, run_id, RunResult("failed", str(exc)), started)
            return
        runner = JobRunner(
            self.config,
            DockerRunner(self._docker, self.config.executor),
            self._js,
            job,
            run_id,
            attempt,
            emit,
            stop,
            secrets,
            metrics=self.metrics,
        )
        try:
            result = await runner.run()
        finally:
            if secrets is not None:
                # Secrets live only as long as the run that needs them.
                await self._vault.purge(job.job_id)
        if runner.masker is not None:
            result.reason = runner.masker.mask(result.reason)
        await self._finish(job, run_id, result, started)

    async def _secrets_of(self, job: JobState) -> JobSecrets | None:
        if not job.secret_names and not job.credentials_kind:
            return None
        return await self._vault.get(job.job_id)

    async def _still_ours(self, job: JobState, run_id: str) -> int | None:
        """Return the job's last sequence if the run's attempt is still this
        executor's, else None."""
        assert self._js is not None
        stored = await read_job(self._js, job.job_id)
        state = fold(s.event for s in stored)
        run = state.run(run_id) if state else None
        if run is None or run.finished:
            return None
        ours = run.attempt == self._attempts.get(run_id, run.attempt) and (
            run.executor_id == self.config.executor.id
        )
        return stored[-1].seq if ours else None

    def _on_run_finished(self, event: AnyEvent) -> None:
        """Stop a run here that another writer has already finished."""
        if not isinstance(event, RunFinished):
            return
        stop = self._stops.get(event.run_id)
        if stop is None or event.run_id in self._finishing:
            return
        self._superseded.add(event.run_id)
        stop.hurry.set()
        stop.requested.set()
        log.warning(
            "run %s was finished elsewhere (%s); stopping it here",
            event.run_id,
            event.outcome,
        )

    def _on_attempt_lost(self, event: AnyEvent) -> None:
        """Stop a run here at once when another executor declared its attempt lost.

        That happens when this executor's progress acks did not reach NATS for
        longer than the ack wait (a NATS restart, a network split): the order
        went to another executor, which now runs the next attempt.
        """
        if not isinstance(event, AttemptLost):
            return
        attempt = self._attempts.get(event.run_id)
        stop = self._stops.get(event.run_id)
        if attempt != event.attempt or stop is None:
            return
        self._superseded.add(event.run_id)
        stop.hurry.set()
        stop.requested.set()
        log.warning(
            "attempt %d of run %s was declared lost by another executor; "
            "stopping it here without recording an outcome",
            attempt,
            event.run_id,
        )

    async def _finish(
        self, job: JobState, run_id: str, result: RunResult, started: float
    ) -> None:
        assert self._js is not None
        duration = time.monotonic() - started
        finished = RunFinished(
            job_id=job.job_id,
            run_id=run_id,
            outcome=result.outcome,  # type: ignore[arg-type]
            reason=result.reason,
            duration_s=round(duration, 3),
            last_log_seq=result.last_log_seq,
        )
        self._finishing.add(run_id)
        # Guarded by the job's last sequence: an attempt_lost appended by
        # another executor between the check and the append makes it conflict.
        for _ in range(5):
            last = await self._still_ours(job, run_id)
            if run_id in self._superseded or last is None:
                log.info(
                    "run %s has a newer attempt elsewhere; its outcome is theirs",
                    run_id,
                )
                return
            try:
                await append(
                    self._js,
                    finished,
                    msg_id=f"{run_id}:finished",
                    expected_last_seq=last,
                )
                break
            except StreamConflict:
                continue
        self.metrics.observe_run(result.outcome, duration)
        log.info(
            "run %s of job %s finished: %s in %.2fs %s",
            run_id,
            job.job_id,
            result.outcome,
            duration,
            result.reason,
            extra=job_fields(job.job_id, run_id),
        )

    async def _on_job_event(self, msg: Msg) -> None:
        # Core NATS sees every append to a job subject; only cancels and
        # lost attempts of runs this executor runs matter here.
        if b'"run.attempt_lost"' in msg.data:
            self._on_attempt_lost(decode_event(msg.data))
            return
        if b'"run.finished"' in msg.data:
            self._on_run_finished(decode_event(msg.data))
            return
        if b'"run.cancel_requested"' not in msg.data:
            return
        event = decode_event(msg.data)
        if isinstance(event, CancelRequested):
            stop = self._stops.get(event.run_id)
            if stop is not None:
                if stop.requested.is_set():
                    stop.hurry.set()
                stop.requested.set()
                log.info("cancel requested for run %s", event.run_id)
