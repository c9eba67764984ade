"""Running several services in one process, as `stasis up` and `stasis run` do."""

import logging
import os
from typing import Protocol

from prometheus_client import CollectorRegistry

from libs.config import Config
from libs.events.embedded import EmbeddedNats
from services.executor.service import Executor
from services.gateway import Gateway
from services.logsink import LogSink
from services.scheduler import Scheduler

log = logging.getLogger(__name__)


class Service(Protocol):
    """What the stack needs of a service."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Stack:
    """NATS (embedded when no URL is configured) plus the four services."""

    def __init__(self, config: Config, nats_store: str | None = None) -> None:
        self.config = config
        self.nats: EmbeddedNats | None = None
        if not config.nats.url:
            store = nats_store or os.path.join(config.data_dir, "nats")
            self.nats = EmbeddedNats(store, port=config.nats.embedded_port)
        self.gateway: Gateway | None = None
        self._started: list[Service] = []
        self.registry = CollectorRegistry()
        """Metrics of all four services, served at the gateway's `/metrics`."""

    @property
    def nats_url(self) -> str:
        """The URL of the NATS server the services use."""
        if self.nats is not None:
            return self.nats.url
        assert self.config.nats.url
        return self.config.nats.url

    async def start(self) -> None:
        """Start NATS, then logsink, scheduler, executor and gateway."""
        os.makedirs(self.config.data_dir, exist_ok=True)
        try:
            if self.nats is not None:
                await self.nats.start()
                self._started.append(self.nats)
            url = self.nats_url
            self.gateway = Gateway(self.config, url, self.registry)
            for service in (
                LogSink(self.config, url, self.registry),
                Scheduler(self.config, url, registry=self.registry),
                Executor(self.config, url, registry=self.registry),
                self.gateway,
            ):
                await service.start()
                self._started.append(service)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop whatever started, in reverse order."""
        while self._started:
            service = self._started.pop()
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
