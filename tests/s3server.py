"""A moto S3 server in a subprocess on 127.0.0.1, for tests that make real S3 calls.

Typical use from a session fixture:

    @pytest.fixture(scope="session")
    def s3_server() -> Iterator[MotoS3Server]:
        with fake_aws_environment(), MotoS3Server() as server:
            yield server

Then point every client at `server.endpoint_url`. `fake_aws_environment` sets
dummy credentials and a region, turns off the EC2 instance metadata lookup and
hides the user's AWS config files, so botocore never reaches a real AWS host.
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO

import boto3

from libs.events.embedded import free_port

FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    # botocore and urllib honour HTTP(S)_PROXY, but loopback calls must go direct.
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
_START_ATTEMPTS = 3


@contextmanager
def fake_aws_environment() -> Iterator[None]:
    """Set `FAKE_AWS_ENVIRONMENT` in `os.environ` and restore the old values after."""
    saved = {name: os.environ.get(name) for name in FAKE_AWS_ENVIRONMENT}
    os.environ.update(FAKE_AWS_ENVIRONMENT)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MotoS3Server:
    """`python -m moto.server` on a free port of 127.0.0.1, started and stopped here."""

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # An opener without proxies, so a proxy setting cannot take loopback calls.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def endpoint_url(self) -> str:
        """The server's base URL, for `endpoint_url=` of every S3 client."""
        if self._process is None:
            raise RuntimeError("the moto S3 server is not running: call start() first")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Start the server, wait until it answers HTTP, and return its URL.

        A free port can be taken by another process between the check and the
        server's bind, so a server that exits during start-up is retried on a new
        port, up to three times.
        """
        for _ in range(_START_ATTEMPTS):
            self.port = free_port()
            command = [sys.executable, "-m", "moto.server"]
            command += ["-H", "127.0.0.1", "-p", str(self.port)]
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
            self._process = subprocess.Popen(
                command,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **FAKE_AWS_ENVIRONMENT},
            )
            if self._wait_until_ready():
                return self.endpoint_url
            output = self._output()
            self.stop()
        raise RuntimeError(
            f"moto S3 server did not start on 127.0.0.1 within "
            f"{self.startup_timeout}s after {_START_ATTEMPTS} attempts; its last "
            f"output:\n{output}"
        )

    def stop(self) -> None:
        """Stop the server. Calling it again does nothing."""
        process, self._process = self._process, None
        log, self._log = self._log, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log is not None:
            log.close()

    def reset(self) -> None:
        """Delete every bucket and object, through moto's reset API."""
        request = urllib.request.Request(
            self.endpoint_url + "/moto-api/reset", method="POST"
        )
        with self._opener.open(request, timeout=10):
            pass

    def create_bucket(self, name: str) -> None:
        """Create an empty bucket on this server."""
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=FAKE_AWS_ENVIRONMENT["AWS_DEFAULT_REGION"],
            aws_access_key_id=FAKE_AWS_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)

    def __enter__(self) -> "MotoS3Server":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_until_ready(self) -> bool:
        """Return True once the server answers, False if its process exited."""
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with self._opener.open(self.endpoint_url + "/moto-api/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")
