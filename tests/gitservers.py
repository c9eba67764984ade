"""Real git servers on 127.0.0.1 for clone tests, and repositories to serve.

`GitHttpServer` runs `git http-backend` behind a threaded `http.server` CGI
bridge. It checks HTTP basic or bearer authentication, serves the Git LFS
batch API from each bare repository's `lfs/objects`, can delay every
response, and records the Authorization header of every request, so
a test can assert which credential reached which server.

`SshGitServer` runs Debian's `/usr/sbin/sshd` (package openssh-server) in the
foreground with its own config, host key and authorized_keys in a temporary
directory. Its one authorized key may only run `git-shell`. It never touches
the machine's own sshd or its config.

Typical use:

    with GitHttpServer(tmp_path / "http", auth="basic") as server:
        repo = make_history_repository(tmp_path / "work", server.root, "app")
        url = server.url("app")
"""

import base64
import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from libs.events.embedded import free_port

AuthMode = Literal["none", "basic", "bearer"]

GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@localhost"]
_LFS_BATCH = re.compile(r"^/(?P<repo>[^/]+\.git)/info/lfs/objects/batch$")
_LFS_OBJECT = re.compile(r"^/(?P<repo>[^/]+\.git)/lfs-objects/(?P<oid>[0-9a-f]{64})$")
_LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"


@dataclass(frozen=True)
class RecordedRequest:
    """One request a test server received: method, path and Authorization header."""

    method: str
    path: str
    authorization: str | None


class _Server:
    """Context manager protocol for a test server with start() and stop()."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class GitHttpServer(_Server):
    """A smart-HTTP git server on a free port of 127.0.0.1; see the module docstring.

    `auth` selects the check: "none", "basic" (`username` and `password`) or
    "bearer" (`token`). With `allow_sha_in_want=False` the server speaks only
    protocol v0 and rejects requests for commits by SHA that no ref
    advertises, as many hosted servers do. `delay` delays every response by
    that many seconds.
    """

    root: Path
    auth: AuthMode = "none"
    username: str = "ci-user"
    password: str = "s3cret-Pa55word"
    token: str = "tok-0123456789abcdef"
    allow_sha_in_want: bool = True
    delay: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._server is None:
            raise RuntimeError("the git HTTP server is not running: call start()")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:<port>`, the scheme, host and port of every URL."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        """Return the clone URL of the repository served from `<root>/<name>.git`."""
        return f"{self.origin}/{name}.git"

    def start(self) -> None:
        """Bind a free port of 127.0.0.1 and serve in a daemon thread."""
        self.root.mkdir(parents=True, exist_ok=True)
        handler = type("Handler", (_GitHttpHandler,), {"git_server": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="git-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket. Delayed requests get no response."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def authorizations(self) -> list[str | None]:
        """Return the Authorization header of each request so far, in order."""
        return [request.authorization for request in self.requests]

    def expected_authorization(self) -> str | None:
        """Return the Authorization header that this server accepts."""
        if self.auth == "basic":
            pair = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if self.auth == "bearer":
            return f"Bearer {self.token}"
        return None

    def wait(self) -> None:
        """Sleep for `delay` seconds, or until the server stops."""
        self._stopping.wait(self.delay)

    @property
    def stopping(self) -> bool:
        """Whether stop() was called, so that pending requests get no response."""
        return self._stopping.is_set()


class _GitHttpHandler(BaseHTTPRequestHandler):
    git_server: GitHttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet: requests are in `git_server.requests`."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        server = self.git_server
        authorization = self.headers.get("Authorization")
        server.requests.append(RecordedRequest(self.command, self.path, authorization))
        body = self._read_body()
        server.wait()
        if server.stopping:
            return
        if server.auth != "none" and authorization != server.expected_authorization():
            scheme = "Basic" if server.auth == "basic" else "Bearer"
            self._reply(401, {"WWW-Authenticate": f'{scheme} realm="git"'}, b"")
            return
        path = self.path.split("?", 1)[0]
        if batch := _LFS_BATCH.match(path):
            self._reply_lfs_batch(batch["repo"], body)
        elif obj := _LFS_OBJECT.match(path):
            self._reply_lfs_object(obj["repo"], obj["oid"])
        else:
            self._run_http_backend(body)

    def _read_body(self) -> bytes:
        # git sends large requests with chunked transfer encoding.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _run_http_backend(self, body: bytes) -> None:
        server = self.git_server
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if encoding := self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
        # Without GIT_PROTOCOL, http-backend speaks protocol v0, where only
        # uploadpack.allow*SHA1InWant admits a request for a commit by SHA.
        protocol = self.headers.get("Git-Protocol")
        if protocol and server.allow_sha_in_want:
            env["GIT_PROTOCOL"] = protocol

        result = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            check=False,
        )
        self._reply(*parse_cgi_output(result.stdout))

    def _lfs_path(self, repo: str, oid: str) -> Path:
        return (
            self.git_server.root / repo / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        )

    def _reply_lfs_batch(self, repo: str, body: bytes) -> None:
        request = json.loads(body)
        objects = []
        for item in request.get("objects", []):
            oid, size = item["oid"], item["size"]
            if self._lfs_path(repo, oid).is_file():
                href = f"{self.git_server.origin}/{repo}/lfs-objects/{oid}"
                actions = {"download": {"href": href}}
                objects.append({"oid": oid, "size": size, "actions": actions})
            else:
                error = {"code": 404, "message": f"object {oid} not found"}
                objects.append({"oid": oid, "size": size, "error": error})
        answer = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._reply(200, {"Content-Type": _LFS_MEDIA_TYPE}, answer)

    def _reply_lfs_object(self, repo: str, oid: str) -> None:
        path = self._lfs_path(repo, oid)
        if not path.is_file():
            self._reply(404, {}, b"")
            return
        self._reply(
            200, {"Content-Type": "application/octet-stream"}, path.read_bytes()
        )


def parse_cgi_output(output: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split a CGI program's output into status, headers and body."""
    head, _, content = output.partition(b"\r\n\r\n")
    if not content and b"\r\n" not in head:
        head, _, content = output.partition(b"\n\n")
    status, headers = 200, {}
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers[name] = value.strip()
    return status, headers, content


class SshGitServer(_Server):
    """`/usr/sbin/sshd -D -e -f <config>` on a free port of 127.0.0.1.

    `client_key` is a private key in OpenSSH format that may log in as the
    current user and run only `git-shell`. `known_hosts` lists this server's
    host key. Use `with` or start() and stop().
    """

    def __init__(self, directory: Path, *, startup_timeout: float = 15.0) -> None:
        self.directory = directory
        self.startup_timeout = startup_timeout
        self.port = 0
        self.user = getpass.getuser()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def client_key(self) -> str:
        """The private key text that the server accepts."""
        return (self.directory / "client_key").read_text()

    @property
    def known_hosts(self) -> str:
        """A known_hosts line for this server's host key and port."""
        public = (self.directory / "host_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    @property
    def log(self) -> str:
        """What sshd wrote to its standard error so far."""
        path = self.directory / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, repository: Path) -> str:
        """Return the ssh:// URL of the bare repository at the absolute path."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repository}"

    def start(self) -> None:
        """Write keys and config, start sshd, and wait until it listens."""
        self.directory.mkdir(parents=True, exist_ok=True)
        generate_ssh_key(self.directory / "host_key")
        generate_ssh_key(self.directory / "client_key")
        public = (self.directory / "client_key.pub").read_text().strip()
        command = 'command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"",restrict'
        (self.directory / "authorized_keys").write_text(f"{command} {public}\n")
        self.port = free_port()
        config = self._write_config()
        # sshd refuses to start without its privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with (self.directory / "sshd.log").open("wb") as log:
            self._process = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_listening()

    def _write_config(self) -> Path:
        config = self.directory / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1:{self.port}\n"
            f"HostKey {self.directory / 'host_key'}\n"
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}\n"
            f"PidFile {self.directory / 'sshd.pid'}\n"
            f"AllowUsers {self.user}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "LogLevel VERBOSE\n"
        )
        return config

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited at start:\n{self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen within {self.startup_timeout}s")

    def stop(self) -> None:
        """Stop sshd and wait for it to exit."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def generate_ssh_key(path: Path) -> None:
    """Write a new ed25519 key pair without a passphrase to `path` and `path.pub`."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
    )


def git(path: Path, *args: str) -> str:
    """Run git in `path` with a test identity and return its standard output."""
    result = subprocess.run(
        [*GIT, "-C", str(path), *args], check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def commit_files(work: Path, files: dict[str, str | bytes], message: str) -> str:
    """Write `files` into the work tree `work`, commit them, and return the SHA."""
    for name, content in files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD")


def init_work_tree(work: Path) -> None:
    """Create an empty repository with branch `main` at `work`."""
    work.mkdir(parents=True, exist_ok=True)
    git(work, "init", "-q", "-b", "main")


def publish(work: Path, root: Path, name: str) -> Path:
    """Copy `work` as the bare repository `<root>/<name>.git` and return its path.

    All refs are copied, `refs/pull/*` included, and so are Git LFS objects.
    The copy allows requests for any reachable commit by SHA over protocol v0.
    """
    bare = root / f"{name}.git"
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "clone", "-q", "--mirror", str(work), str(bare)],
        check=True,
        capture_output=True,
    )
    git(bare, "config", "uploadpack.allowReachableSHA1InWant", "true")
    git(bare, "config", "http.receivepack", "false")
    lfs_objects = work / ".git" / "lfs" / "objects"
    if lfs_objects.is_dir():
        shutil.copytree(lfs_objects, bare / "lfs" / "objects")
    return bare


@dataclass(frozen=True)
class History:
    """A served repository with three commits on `main` and one on a pull ref.

    `old` is the first commit of `main` and the head of no branch; `pull` is a
    commit reachable only from `refs/pull/1/head`, as a pull request head is.
    """

    bare: Path
    old: str
    middle: str
    head: str
    pull: str


def make_history_repository(work: Path, root: Path, name: str) -> History:
    """Create and publish the repository that `History` describes."""
    init_work_tree(work)
    files = {".stasis-ci.yaml": "image: busybox\nsteps: []\n"}
    old = commit_files(work, {**files, "version.txt": "1\n"}, "first")
    middle = commit_files(work, {"version.txt": "2\n"}, "second")
    head = commit_files(work, {"version.txt": "3\n"}, "third")
    git(work, "checkout", "-q", "-b", "topic")
    pull = commit_files(work, {"version.txt": "pull\n"}, "pull request")
    git(work, "update-ref", "refs/pull/1/head", pull)
    git(work, "checkout", "-q", "main")
    git(work, "branch", "-q", "-D", "topic")
    bare = publish(work, root, name)
    return History(bare=bare, old=old, middle=middle, head=head, pull=pull)


def make_superproject(
    work: Path, root: Path, name: str, submodules: dict[str, tuple[str, str]]
) -> str:
    """Publish a superproject whose submodules are `{path: (url, commit)}`.

    URLs are written to `.gitmodules` as given, so `../lib.git` stays relative
    and is resolved against the URL the superproject is cloned from.
    """
    init_work_tree(work)
    lines = []
    for path, (url, _) in submodules.items():
        lines += [f'[submodule "{path}"]', f"\tpath = {path}", f"\turl = {url}"]
    (work / ".gitmodules").write_text("\n".join(lines) + "\n")
    git(work, "add", ".gitmodules")
    # Gitlinks go straight into the index: `git add -A` would drop them,
    # because the submodule directories do not exist in this work tree.
    for path, (_, commit) in submodules.items():
        git(work, "update-index", "--add", "--cacheinfo", f"160000,{commit},{path}")
    git(work, "commit", "-q", "-m", "submodules")
    publish(work, root, name)
    return git(work, "rev-parse", "HEAD")


def make_lfs_repository(work: Path, root: Path, name: str, content: bytes) -> str:
    """Publish a repository whose `data.bin` is tracked by Git LFS; return the SHA."""
    init_work_tree(work)
    git(work, "lfs", "install", "--local")
    git(work, "lfs", "track", "*.bin")
    sha = commit_files(work, {"data.bin": content, "readme.txt": "lfs\n"}, "lfs")
    publish(work, root, name)
    return sha


@contextmanager
def recorded_git_argv(log: Path) -> Iterator[Path]:
    """Yield a directory with a `git` wrapper that appends each argv to `log`.

    Put the directory first on PATH: every git command then writes its
    arguments, one per line, followed by an empty line, before running the
    real git.
    """
    real = shutil.which("git")
    if real is None:
        raise RuntimeError("git is not installed; install the Debian package git")
    with tempfile.TemporaryDirectory(prefix="git-argv-") as directory:
        wrapper = Path(directory) / "git"
        wrapper.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "$@" "" >> "{log}"\nexec "{real}" "$@"\n'
        )
        wrapper.chmod(0o755)
        yield Path(directory)
