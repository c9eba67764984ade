"""Clone tests against real git servers on 127.0.0.1: smart HTTP and sshd.

Each test starts the servers it needs from `tests.gitservers` and stops them
when it ends. Credentials are checked where they must arrive (the servers'
recorded Authorization headers and sshd's log) and where they must never be
(argv, `.git/config`, the workspace, output lines and error messages).
"""

import asyncio
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from libs.events import Repository
from services.executor.credentials import (
    Credentials,
    Scrubber,
    git_auth_environment,
    parse_remote,
)
from services.executor.workspace import Checkout, CloneError, clone
from tests.gitservers import (
    GitHttpServer,
    History,
    SshGitServer,
    commit_files,
    generate_ssh_key,
    git,
    init_work_tree,
    make_history_repository,
    make_lfs_repository,
    make_superproject,
    publish,
    recorded_git_argv,
)

TIMEOUT = 60.0
MISSING_SHA = "0123456789abcdef0123456789abcdef01234567"
LFS_CONTENT = b"real LFS content\n" * 64

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None, reason="git is not installed; run scripts/setup.sh"
)


@pytest.fixture(autouse=True)
def loopback_without_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every clone of these tests on 127.0.0.1, whatever proxy is set."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def http_servers(tmp_path: Path) -> Iterator[Callable[..., GitHttpServer]]:
    """Start `GitHttpServer`s with the given options; all stop after the test."""
    started: list[GitHttpServer] = []

    def start(name: str = "http", **options: object) -> GitHttpServer:
        server = GitHttpServer(tmp_path / "servers" / name, **options)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[SshGitServer]:
    """A running sshd that serves repositories by absolute path."""
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("sshd is missing; run scripts/setup.sh to install openssh-server")
    with SshGitServer(tmp_path / "sshd") as server:
        yield server


def basic(server: GitHttpServer) -> Credentials:
    return Credentials(username=server.username, password=server.password)


def head_of(path: Path) -> str:
    return git(path, "rev-parse", "HEAD")


def commit_count(path: Path) -> int:
    return int(git(path, "rev-list", "--count", "HEAD"))


# --- authentication -------------------------------------------------------


async def test_basic_auth_clones_head(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(auth="basic")
    history = make_history_repository(tmp_path / "work", server.root, "app")
    output: list[str] = []

    checkout = await clone(
        Repository(url=server.url("app")),
        tmp_path / "src",
        TIMEOUT,
        output,
        credentials=basic(server),
    )

    assert checkout == Checkout(tmp_path / "src", history.head, None)
    assert head_of(tmp_path / "src") == history.head
    assert (tmp_path / "src" / "version.txt").read_text() == "3\n"
    assert server.expected_authorization() in server.authorizations()


async def test_bearer_token_sent_as_header(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(auth="bearer")
    history = make_history_repository(tmp_path / "work", server.root, "app")

    checkout = await clone(
        Repository(url=server.url("app"), branch="main"),
        tmp_path / "src",
        TIMEOUT,
        [],
        credentials=Credentials(token=server.token),
    )

    assert checkout.commit == history.head
    assert checkout.branch == "main"
    # The header goes with the first request already, without a 401 round trip.
    assert server.authorizations() == [f"Bearer {server.token}"] * len(server.requests)


async def test_wrong_password_fails_clearly(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(auth="basic")
    make_history_repository(tmp_path / "work", server.root, "app")
    wrong = "wrong-Passw0rd-123"
    output: list[str] = []

    with pytest.raises(CloneError) as caught:
        await clone(
            Repository(url=server.url("app")),
            tmp_path / "src",
            TIMEOUT,
            output,
            credentials=Credentials(username=server.username, password=wrong),
        )

    message = str(caught.value)
    assert "Authentication failed" in message
    assert "check the username and password" in message
    assert server.url("app") in message
    assert wrong not in message
    assert all(wrong not in line for line in output)


async def test_missing_credentials_fail_clearly(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(auth="bearer")
    make_history_repository(tmp_path / "work", server.root, "app")

    with pytest.raises(CloneError, match="pass credentials for this repository"):
        await clone(Repository(url=server.url("app")), tmp_path / "src", TIMEOUT, [])


async def test_url_userinfo_becomes_basic_auth(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(auth="basic")
    history = make_history_repository(tmp_path / "work", server.root, "app")
    url = server.url("app").replace("://", f"://{server.username}:{server.password}@")
    output: list[str] = []

    checkout = await clone(Repository(url=url), tmp_path / "src", TIMEOUT, output)

    assert checkout.commit == history.head
    config = (tmp_path / "src" / ".git" / "config").read_text()
    assert f"url = {server.url('app')}" in config
    assert server.password not in config


async def test_ssh_key_with_known_hosts(
    tmp_path: Path, ssh_server: SshGitServer
) -> None:
    history = make_history_repository(tmp_path / "work", tmp_path / "repos", "app")
    credentials = Credentials(
        ssh_private_key=ssh_server.client_key, known_hosts=ssh_server.known_hosts
    )

    checkout = await clone(
        Repository(url=ssh_server.url(history.bare)),
        tmp_path / "src",
        TIMEOUT,
        [],
        credentials=credentials,
    )

    assert checkout.commit == history.head
    assert "Accepted publickey" in ssh_server.log


async def test_ssh_wrong_known_hosts_fails(
    tmp_path: Path, ssh_server: SshGitServer
) -> None:
    history = make_history_repository(tmp_path / "work", tmp_path / "repos", "app")
    generate_ssh_key(tmp_path / "impostor")
    impostor = (tmp_path / "impostor.pub").read_text().split()
    known_hosts = f"[127.0.0.1]:{ssh_server.port} {impostor[0]} {impostor[1]}\n"
    output: list[str] = []

    with pytest.raises(CloneError) as caught:
        await clone(
            Repository(url=ssh_server.url(history.bare)),
            tmp_path / "src",
            TIMEOUT,
            output,
            credentials=Credentials(
                ssh_private_key=ssh_server.client_key, known_hosts=known_hosts
            ),
        )

    assert "Host key verification failed" in str(caught.value)
    assert "check the credential's known_hosts" in str(caught.value)
    assert "Accepted publickey" not in ssh_server.log


async def test_ssh_unknown_host_without_strict_checking(
    tmp_path: Path, ssh_server: SshGitServer
) -> None:
    history = make_history_repository(tmp_path / "work", tmp_path / "repos", "app")
    credentials = Credentials(
        ssh_private_key=ssh_server.client_key, strict_host_key_checking=False
    )

    checkout = await clone(
        Repository(url=ssh_server.url(history.bare), commit=history.middle),
        tmp_path / "src",
        TIMEOUT,
        [],
        credentials=credentials,
        depth=1,
    )

    assert checkout.commit == history.middle


def effective_ssh_config(command: str, port: int) -> dict[str, list[str]]:
    """Return what `ssh -G` resolves for 127.0.0.1:`port` under `command`."""
    argv = [*shlex.split(command), "-G", "-p", str(port), "127.0.0.1"]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    config: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(" ")
        config.setdefault(name, []).append(value)
    return config


def test_ssh_key_scoped_to_host_port() -> None:
    remote, _ = parse_remote("ssh://git@127.0.0.1:2222/app.git")
    credentials = Credentials(ssh_private_key="key text", known_hosts="hosts")

    with git_auth_environment(credentials, remote) as env:
        own = effective_ssh_config(env["GIT_SSH_COMMAND"], 2222)
        other = effective_ssh_config(env["GIT_SSH_COMMAND"], 2223)
        key_file = Path(own["identityfile"][0])
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.parent.stat().st_mode & 0o777 == 0o700

    assert own["stricthostkeychecking"] == ["true"]
    assert own["userknownhostsfile"] == [str(key_file.parent / "known_hosts")]
    assert str(key_file) not in other["identityfile"]
    assert other["stricthostkeychecking"] == ["ask"]
    assert not key_file.parent.exists()


async def test_ssh_key_for_http_url_rejected(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers()
    credentials = Credentials(ssh_private_key="-----BEGIN KEY-----\nabc\n")

    with pytest.raises(CloneError, match="ssh credentials need an SSH repository"):
        await clone(
            Repository(url=server.url("app")),
            tmp_path / "src",
            TIMEOUT,
            [],
            credentials=credentials,
        )


# --- commits and shallow clones ---------------------------------------------


@pytest.fixture
def served(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> tuple[GitHttpServer, History]:
    server = http_servers()
    return server, make_history_repository(tmp_path / "work", server.root, "app")


async def test_shallow_clone_of_non_head_commit(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, history = served

    checkout = await clone(
        Repository(url=server.url("app"), commit=history.old),
        tmp_path / "src",
        TIMEOUT,
        [],
        depth=1,
    )

    assert checkout.commit == history.old
    assert head_of(tmp_path / "src") == history.old
    assert commit_count(tmp_path / "src") == 1
    assert (tmp_path / "src" / "version.txt").read_text() == "1\n"


async def test_shallow_clone_of_pull_request_commit(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, history = served

    checkout = await clone(
        Repository(url=server.url("app"), commit=history.pull),
        tmp_path / "src",
        TIMEOUT,
        [],
        depth=1,
    )

    assert checkout.commit == history.pull
    assert (tmp_path / "src" / "version.txt").read_text() == "pull\n"


async def test_shallow_fallback_when_server_refuses_sha(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(allow_sha_in_want=False)
    history = make_history_repository(tmp_path / "work", server.root, "app")
    git(history.bare, "config", "uploadpack.allowReachableSHA1InWant", "false")
    output: list[str] = []

    checkout = await clone(
        Repository(url=server.url("app"), commit=history.old),
        tmp_path / "src",
        TIMEOUT,
        output,
        depth=1,
    )

    assert checkout.commit == history.old
    assert head_of(tmp_path / "src") == history.old
    assert any("increasing depth" in line for line in output)


async def test_short_sha_resolves_to_full(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, history = served

    checkout = await clone(
        Repository(url=server.url("app"), commit=history.middle[:10].upper()),
        tmp_path / "src",
        TIMEOUT,
        [],
        depth=1,
    )

    assert checkout.commit == history.middle


async def test_missing_commit_names_commit_and_depth(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, _ = served

    with pytest.raises(CloneError) as caught:
        await clone(
            Repository(url=server.url("app"), commit=MISSING_SHA),
            tmp_path / "src",
            TIMEOUT,
            [],
            depth=2,
        )

    assert MISSING_SHA in str(caught.value)
    assert "at depth 2" in str(caught.value)


async def test_missing_commit_in_full_clone(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, _ = served

    with pytest.raises(CloneError, match=f"commit {MISSING_SHA} not found"):
        await clone(
            Repository(url=server.url("app"), commit=MISSING_SHA),
            tmp_path / "src",
            TIMEOUT,
            [],
        )


async def test_full_clone_has_all_history(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, history = served

    checkout = await clone(
        Repository(url=server.url("app"), commit=history.middle),
        tmp_path / "src",
        TIMEOUT,
        [],
    )

    assert checkout.commit == history.middle
    assert commit_count(tmp_path / "src") == 2
    assert git(tmp_path / "src", "rev-parse", "origin/main") == history.head


async def test_invalid_commit_rejected(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, _ = served

    with pytest.raises(CloneError, match="invalid commit 'main~1'"):
        await clone(
            Repository(url=server.url("app"), commit="main~1"),
            tmp_path / "src",
            TIMEOUT,
            [],
        )


async def test_non_empty_destination_rejected(
    tmp_path: Path, served: tuple[GitHttpServer, History]
) -> None:
    server, _ = served
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "left-over").write_text("x")

    with pytest.raises(CloneError, match="the directory is not empty"):
        await clone(Repository(url=server.url("app")), tmp_path / "src", TIMEOUT, [])


# --- submodules ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["basic", "bearer"])
async def test_submodules_get_credentials_per_host(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer], kind: str
) -> None:
    private = http_servers("private", auth=kind)
    public = http_servers("public")
    lib = tmp_path / "lib"
    init_work_tree(lib)
    lib_sha = commit_files(lib, {"lib.txt": "library\n"}, "lib")
    publish(lib, private.root, "lib")
    other = tmp_path / "other"
    init_work_tree(other)
    other_sha = commit_files(other, {"other.txt": "other host\n"}, "other")
    publish(other, public.root, "other")
    modules = {"lib": ("../lib.git", lib_sha), "ext": (public.url("other"), other_sha)}
    make_superproject(tmp_path / "super", private.root, "super", modules)
    credentials = (
        basic(private) if kind == "basic" else Credentials(token=private.token)
    )

    await clone(
        Repository(url=private.url("super")),
        tmp_path / "src",
        TIMEOUT,
        [],
        credentials=credentials,
        submodules=True,
    )

    assert (tmp_path / "src" / "lib" / "lib.txt").read_text() == "library\n"
    assert (tmp_path / "src" / "ext" / "other.txt").read_text() == "other host\n"
    lib_requests = [r for r in private.requests if r.path.startswith("/lib.git/")]
    assert lib_requests
    assert private.expected_authorization() in [r.authorization for r in lib_requests]
    assert public.requests
    assert public.authorizations() == [None] * len(public.requests)


async def test_submodule_host_asking_gets_no_password(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    # git sends basic credentials only after a 401, so the other host requires
    # authentication too.
    private = http_servers("private", auth="basic")
    other_host = http_servers("other", auth="basic", password="other-Passw0rd")
    other = tmp_path / "other"
    init_work_tree(other)
    other_sha = commit_files(other, {"other.txt": "other host\n"}, "other")
    publish(other, other_host.root, "other")
    modules = {"ext": (other_host.url("other"), other_sha)}
    make_superproject(tmp_path / "super", private.root, "super", modules)

    with pytest.raises(CloneError, match="updating the submodules"):
        await clone(
            Repository(url=private.url("super")),
            tmp_path / "src",
            TIMEOUT,
            [],
            credentials=basic(private),
            submodules=True,
        )

    assert private.expected_authorization() in private.authorizations()
    assert other_host.requests
    assert other_host.authorizations() == [None] * len(other_host.requests)


# --- Git LFS --------------------------------------------------------------------


async def test_lfs_content_is_real(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(auth="basic")
    sha = make_lfs_repository(tmp_path / "work", server.root, "big", LFS_CONTENT)

    checkout = await clone(
        Repository(url=server.url("big")),
        tmp_path / "src",
        TIMEOUT,
        [],
        credentials=basic(server),
        lfs=True,
    )

    assert checkout.commit == sha
    assert (tmp_path / "src" / "data.bin").read_bytes() == LFS_CONTENT
    lfs_requests = [r for r in server.requests if "lfs" in r.path]
    assert server.expected_authorization() in [r.authorization for r in lfs_requests]


async def test_without_lfs_pointer_files_stay(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers()
    make_lfs_repository(tmp_path / "work", server.root, "big", LFS_CONTENT)

    await clone(Repository(url=server.url("big")), tmp_path / "src", TIMEOUT, [])

    pointer = (tmp_path / "src" / "data.bin").read_text()
    assert pointer.startswith("version https://git-lfs.github.com/spec/v1")


async def test_lfs_unavailable_fails_clearly(
    tmp_path: Path,
    http_servers: Callable[..., GitHttpServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http_servers()
    make_lfs_repository(tmp_path / "work", server.root, "big", LFS_CONTENT)
    bin_dir = tmp_path / "bin-without-lfs"
    bin_dir.mkdir()
    real_git = shutil.which("git")
    assert real_git is not None
    (bin_dir / "git").symlink_to(real_git)
    monkeypatch.setenv("PATH", str(bin_dir))

    with pytest.raises(CloneError, match="install the Debian package git-lfs"):
        await clone(
            Repository(url=server.url("big")), tmp_path / "src", TIMEOUT, [], lfs=True
        )


async def test_lfs_missing_object_fails(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers()
    make_lfs_repository(tmp_path / "work", server.root, "big", LFS_CONTENT)
    shutil.rmtree(server.root / "big.git" / "lfs")

    with pytest.raises(CloneError, match="fetching Git LFS objects"):
        await clone(
            Repository(url=server.url("big")), tmp_path / "src", TIMEOUT, [], lfs=True
        )


# --- timeouts and leaks --------------------------------------------------------


def process_cmdlines() -> dict[int, str]:
    """Return the command line of every process that can be read now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        found[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


async def test_timeout_kills_git_processes(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    server = http_servers(delay=30.0)
    make_history_repository(tmp_path / "work", server.root, "app")
    started = time.monotonic()

    with pytest.raises(CloneError, match=r"timed out after 1\.5s"):
        await clone(Repository(url=server.url("app")), tmp_path / "src", 1.5, [])

    assert time.monotonic() - started < 10
    await asyncio.sleep(0.2)
    leftovers = [c for c in process_cmdlines().values() if server.url("app") in c]
    assert leftovers == []


def secret_lines(credentials: Credentials) -> list[str]:
    """Return each credential value, and each line of a key, to search for."""
    found = []
    for value in credentials.secret_values():
        found += [line.strip() for line in value.splitlines() if len(line.strip()) > 8]
    return found


def files_containing(root: Path, secrets: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return hits


async def watch_cmdlines(secrets: list[str], seen: list[str], hits: list[str]) -> None:
    """Record git command lines, and those that contain a secret, until cancelled."""
    while True:
        for pid, cmdline in process_cmdlines().items():
            if pid != os.getpid() and "git" in cmdline.split(" ", 1)[0]:
                seen.append(cmdline)
            hits += [f"{pid}: {cmdline}" for s in secrets if s in cmdline]
        await asyncio.sleep(0.01)


async def clone_and_watch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    repository: Repository,
    credentials: Credentials,
    submodules: bool = False,
) -> "WatchResult":
    """Clone while watching argv; return output, git argv seen, argv hits, argv log."""
    secrets = secret_lines(credentials)
    seen: list[str] = []
    hits: list[str] = []
    output: list[str] = []
    log = tmp_path / "argv.log"
    with recorded_git_argv(log) as wrapper_dir:
        monkeypatch.setenv("PATH", f"{wrapper_dir}:{os.environ['PATH']}")
        watcher = asyncio.create_task(watch_cmdlines(secrets, seen, hits))
        try:
            await clone(
                repository,
                tmp_path / "src",
                TIMEOUT,
                output,
                credentials=credentials,
                submodules=submodules,
            )
        finally:
            watcher.cancel()
    return output, seen, hits, log.read_text()


WatchResult = tuple[list[str], list[str], list[str], str]


def assert_no_leak(
    tmp_path: Path, credentials: Credentials, result: WatchResult
) -> None:
    output, seen, hits, argv_log = result
    secrets = secret_lines(credentials)
    assert secrets
    assert seen, "no git process was observed while the clone ran"
    assert hits == []
    assert [s for s in secrets if s in argv_log] == []
    assert [s for s in secrets if any(s in line for line in output)] == []
    config = (tmp_path / "src" / ".git" / "config").read_text()
    assert [s for s in secrets if s in config] == []
    assert files_containing(tmp_path / "src", secrets) == []
    assert list(Path(os.environ.get("TMPDIR", "/tmp")).glob("stasis-git-auth-*")) == []


@pytest.mark.parametrize("kind", ["basic", "bearer"])
async def test_http_credentials_never_leak(
    tmp_path: Path,
    http_servers: Callable[..., GitHttpServer],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    # Each response is delayed, so the watcher sees git-remote-http running.
    server = http_servers(auth=kind, delay=0.3)
    make_lfs_repository(tmp_path / "work", server.root, "big", LFS_CONTENT)
    lib = tmp_path / "lib"
    init_work_tree(lib)
    lib_sha = commit_files(lib, {"lib.txt": "library\n"}, "lib")
    publish(lib, server.root, "lib")
    modules = {"lib": ("../lib.git", lib_sha)}
    make_superproject(tmp_path / "super", server.root, "super", modules)
    credentials = basic(server) if kind == "basic" else Credentials(token=server.token)

    result = await clone_and_watch(
        tmp_path,
        monkeypatch,
        Repository(url=server.url("super")),
        credentials,
        submodules=True,
    )

    assert (tmp_path / "src" / "lib" / "lib.txt").exists()
    assert any("git-remote-http" in line for line in result[1])
    assert_no_leak(tmp_path, credentials, result)


async def test_ssh_key_never_leaks(
    tmp_path: Path, ssh_server: SshGitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = make_history_repository(tmp_path / "work", tmp_path / "repos", "app")
    credentials = Credentials(
        ssh_private_key=ssh_server.client_key, known_hosts=ssh_server.known_hosts
    )

    result = await clone_and_watch(
        tmp_path, monkeypatch, Repository(url=ssh_server.url(history.bare)), credentials
    )

    assert_no_leak(tmp_path, credentials, result)


async def test_credential_in_git_output_is_scrubbed(
    tmp_path: Path, http_servers: Callable[..., GitHttpServer]
) -> None:
    # git names a missing branch in its error, so a branch spelled like the
    # password makes git print the password itself.
    server = http_servers(auth="basic")
    make_history_repository(tmp_path / "work", server.root, "app")
    output: list[str] = []

    with pytest.raises(CloneError) as caught:
        await clone(
            Repository(url=server.url("app"), branch=server.password),
            tmp_path / "src",
            TIMEOUT,
            output,
            credentials=basic(server),
        )

    assert server.password not in str(caught.value)
    assert "refs/heads/********" in str(caught.value)
    assert output
    assert all(server.password not in line for line in output)


# --- credentials and scrubbing ----------------------------------------------


def test_scrubber_masks_every_form() -> None:
    credentials = Credentials(username="deploy-bot", password="pa:ss/wörd")
    scrubber = Scrubber(credentials.secret_values())
    text = (
        "user deploy-bot password pa:ss/wörd encoded pa%3Ass%2Fw%C3%B6rd "
        "header Basic ZGVwbG95LWJvdDpwYTpzcy93w7ZyZA== "
        "url https://someone:hunter2@git.example/x.git"
    )

    scrubbed = scrubber.scrub(text)

    assert "deploy-bot" not in scrubbed
    assert "pa:ss/wörd" not in scrubbed
    assert "pa%3Ass%2Fw%C3%B6rd" not in scrubbed
    assert "ZGVwbG95LWJvdDpwYTpzcy93w7ZyZA==" not in scrubbed
    assert "hunter2" not in scrubbed
    assert "https://********@git.example/x.git" in scrubbed


def test_scrubber_masks_key_lines() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecretline1\nAAAAsecretline2\n"
    scrubber = Scrubber(Credentials(ssh_private_key=key).secret_values())

    assert "AAAAsecretline2" not in scrubber.scrub("key: AAAAsecretline2 end")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, "set exactly one of"),
        ({"token": "t", "password": "p"}, "set exactly one of"),
        ({"username": "u"}, "needs both a non-empty"),
        ({"token": "abc\nX-Injected: 1"}, "control character"),
        ({"token": ""}, "is empty"),
        ({"known_hosts": "x", "token": "t"}, "applies only with"),
        ({"ssh_private_key": "  "}, "is empty"),
    ],
)
def test_credentials_invalid(fields: dict[str, str], error: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=error):
        msgspec.convert(fields, Credentials)


def test_credentials_repr_hides_values() -> None:
    credentials = Credentials(username="deploy-bot", password="hunter2-secret")

    assert "hunter2-secret" not in repr(credentials)
    assert "basic" in repr(credentials)


@pytest.mark.parametrize(
    ("url", "transport", "origin"),
    [
        ("https://u:p@git.example/a.git", "https", "https://git.example"),
        ("http://git.example:8080/a.git", "http", "http://git.example:8080"),
        ("ssh://git@git.example:2222/a.git", "ssh", "git.example:2222"),
        ("git@git.example:team/a.git", "ssh", "git.example:22"),
        ("file:///srv/a.git", "local", ""),
    ],
)
def test_parse_remote_scopes(url: str, transport: str, origin: str) -> None:
    remote, embedded = parse_remote(url)

    assert remote.origin == origin
    assert remote.transport == ("http" if transport == "https" else transport)
    assert "u:p@" not in remote.url
    assert (embedded is not None) == ("u:p@" in url)


def test_git_is_installed_with_lfs() -> None:
    # The LFS tests need git-lfs; scripts/setup.sh installs it.
    result = subprocess.run(["git", "lfs", "version"], capture_output=True, check=False)
    assert result.returncode == 0, "git-lfs is missing; run scripts/setup.sh"
