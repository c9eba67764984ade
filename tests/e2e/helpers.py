"""Helpers for end-to-end tests that run Stasis processes as real subprocesses."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from libs.events.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One `stasis <service>` subprocess with its own environment."""

    def __init__(self, service: str, nats_url: str, data_dir: Path, **env: str) -> None:
        self.service = service
        self.port = free_port() if service == "gateway" else 0
        self.env = {
            **os.environ,
            "STASIS_NATS_URL": nats_url,
            "STASIS_DATA_DIR": str(data_dir),
            "STASIS_SERVER_PORT": str(self.port),
            "STASIS_EXECUTOR_NETWORK": "none",
            "STASIS_EXECUTOR_PULL_IMAGES": "false",
            **env,
        }
        self.log_path = data_dir / f"{service}-{id(self)}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the process and, for the gateway, wait until /health answers."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", self.service],
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        if self.service == "gateway":
            await self.wait_healthy()

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll /health until it answers 200."""
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.service} exited: {self.log_path.read_text()[-2000:]}"
                    )
                try:
                    async with session.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """Kill the process with SIGKILL, as a crash would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process with SIGTERM and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
