"""Cloning a job's repository on the executor host and packing it for Docker.

The clone lives in a private directory on the executor's host only until it is
uploaded; containers see the source through a Docker volume filled by the
archive API, never through a bind mount, because the Docker daemon may run on
another host or in a VM that cannot see this filesystem.

`clone` fetches like a CI runner: `git init`, then a fetch of exactly the
commit or branch requested (shallow when `depth` is set), a detached checkout
verified against the requested SHA, and optionally submodules and Git LFS
content. Credentials travel as described in `credentials`, and every line of
git output and every error message is scrubbed of them.
"""

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from libs.events import Repository

from .credentials import (
    CredentialMismatchError,
    Credentials,
    Remote,
    Scrubber,
    git_auth_environment,
    parse_remote,
)

log = logging.getLogger(__name__)

PIPELINE_FILE = ".stasis-ci.yaml"

MAX_DEEPEN_ROUNDS = 6
"""Fetches of the branches, doubling the depth each time, when a server rejects
a request for a commit by SHA (depth, 2x depth, ... 32x depth)."""

_BRANCHES = "+refs/heads/*:refs/remotes/origin/*"
_TAGS = "+refs/tags/*:refs/tags/*"
_FULL_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_HEX = re.compile(r"[0-9a-f]{4,64}")


class CloneError(Exception):
    """Raised when the repository cannot be cloned or the commit checked out."""


@dataclass(frozen=True)
class Checkout:
    """A cloned repository on the executor host."""

    path: Path
    commit: str
    branch: str | None


def clone_url(repository: Repository) -> str:
    """Return the URL to hand to git: local paths become absolute `file://` URLs."""
    url = repository.url
    if url.startswith(("/", "./", "../")) or url == ".":
        return Path(url).resolve().as_uri()
    return url


async def clone(
    repository: Repository,
    dest: Path,
    timeout: float,
    output: list[str],
    *,
    credentials: Credentials | None = None,
    depth: int | None = None,
    submodules: bool = False,
    lfs: bool = False,
) -> Checkout:
    """Clone `repository` into `dest` and check out its commit or branch.

    `depth` makes the fetch shallow; `submodules` updates submodules
    recursively; `lfs` replaces Git LFS pointers with their content. Lines that
    git prints are appended to `output` for the job's log. Raises CloneError
    naming the URL and what failed, or when `timeout` runs out; the git process
    tree is killed then. No message or output line contains a credential.
    """
    remote, embedded = parse_remote(clone_url(repository))
    credentials = credentials or embedded
    scrubber = Scrubber(credentials.secret_values() if credentials else [])
    display_url = scrubber.scrub(repository.url)
    _check_arguments(dest, depth, display_url)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        async with asyncio.timeout(timeout):
            with git_auth_environment(credentials, remote) as auth_env:
                git = _Git(_git_environment(auth_env), scrubber, output, dest)
                if lfs:
                    await _require_lfs(git, display_url)
                commit = await _checkout(git, repository, remote, depth, display_url)
                if submodules:
                    await _update_submodules(git, depth, display_url)
                if lfs:
                    await _pull_lfs(git, submodules, display_url)
    except TimeoutError:
        raise CloneError(
            f"cloning {display_url!r} timed out after {timeout:g}s; raise "
            "executor.timeouts.clone or check that the server answers"
        ) from None
    except CredentialMismatchError as exc:
        raise CloneError(
            f"cannot clone {display_url!r}: {scrubber.scrub(str(exc))}"
        ) from None
    except CloneError as exc:
        # Scrubbed once more, and not chained, so no traceback can show a
        # message that missed the scrubber.
        raise CloneError(scrubber.scrub(str(exc))) from None
    return Checkout(path=dest, commit=commit, branch=repository.branch)


def _check_arguments(dest: Path, depth: int | None, display_url: str) -> None:
    if depth is not None and depth < 1:
        raise CloneError(
            f"invalid clone depth {depth!r} for {display_url!r}: use a positive number "
            "of commits, or None for the whole history"
        )
    if dest.exists() and any(dest.iterdir()):
        raise CloneError(
            f"cannot clone {display_url!r} into {str(dest)!r}: the directory is not "
            "empty; pass a new or empty directory"
        )


def _git_environment(auth_env: dict[str, str]) -> dict[str, str]:
    # Inherited GIT_* variables could redirect the repository (GIT_DIR), add
    # config, or trace HTTP headers, so none of them pass through.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("GIT_") and name != "SSH_ASKPASS"
    }
    return {
        **inherited,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        # Checkout writes pointers; `git lfs pull` fills them when LFS is asked for.
        "GIT_LFS_SKIP_SMUDGE": "1",
        "LC_ALL": "C",
        **auth_env,
    }


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    message: str


class _Git:
    """Runs git in a clone's directory, with its environment and its scrubber."""

    def __init__(
        self, env: dict[str, str], scrubber: Scrubber, output: list[str], dest: Path
    ) -> None:
        self.env = env
        self.scrubber = scrubber
        self.output = output
        self.dest = dest

    def note(self, line: str) -> None:
        """Append a line of our own to the job's output."""
        self.output.append(self.scrubber.scrub(line))

    async def run(
        self, *args: str, action: str, cwd: Path | None = None, check: bool = True
    ) -> _Result:
        """Run `git args` and return its result; raise CloneError if `check` fails."""
        returncode, stdout, stderr = await _run_process(
            ["git", *args], cwd or self.dest, self.env
        )
        message = self.scrubber.scrub(stderr.decode(errors="replace").strip())
        if message:
            self.output.extend(message.splitlines())
        if check and returncode != 0:
            raise CloneError(
                f"{action} failed (git exit {returncode}): {_explain(message)}"
            )
        return _Result(returncode, stdout.decode(errors="replace"), message)

    async def resolve(self, revision: str) -> str | None:
        """Return the full SHA of commit `revision`, or None if it is not here."""
        result = await self.run(
            "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}",
            action="resolving", check=False,
        )  # fmt: skip
        return result.stdout.strip() if result.returncode == 0 else None

    async def fetch(
        self,
        refspecs: list[str],
        depth: int | None,
        display_url: str,
        check: bool = True,
    ) -> _Result:
        """Fetch `refspecs` from origin, `depth` commits deep when set."""
        args = ["fetch", "--quiet", "--no-tags", "--no-recurse-submodules"]
        if depth is not None:
            args.append(f"--depth={depth}")
        return await self.run(
            *args,
            "origin",
            *refspecs,
            action=f"fetching from {display_url!r}",
            check=check,
        )


_HINTS = (
    ("Host key verification failed", "the SSH host key is not the one in "
     "known_hosts; check the credential's known_hosts"),
    ("Permission denied (publickey", "the server rejected the SSH key; check "
     "ssh_private_key and the server's authorized keys"),
    ("Authentication failed", "the server rejected the credentials; check the "
     "username and password or the token"),
    ("terminal prompts disabled", "the server asked for credentials; pass "
     "credentials for this repository"),
)  # fmt: skip


def _explain(message: str) -> str:
    """Return the line of git's `message` that names the failure, with a hint."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for needle, hint in _HINTS:
        for line in lines:
            if needle in line:
                return f"{line} ({hint})"
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "git printed no message"


async def _run_process(
    argv: list[str], cwd: Path, env: dict[str, str]
) -> tuple[int, bytes, bytes]:
    # A new session puts git and its helpers (git-remote-http, ssh, git-lfs)
    # in one process group, so a timeout kills all of them.
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def _checkout(
    git: _Git,
    repository: Repository,
    remote: Remote,
    depth: int | None,
    display_url: str,
) -> str:
    await git.run("init", "--quiet", str(git.dest), action="git init")
    await git.run("remote", "add", "origin", remote.url, action="adding the remote")
    commit = await _fetch_target(git, repository, depth, display_url)
    await git.run(
        "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit,
        action=f"checking out {commit}",
    )  # fmt: skip
    head = (await git.run("rev-parse", "HEAD", action="reading HEAD")).stdout.strip()
    if head != commit:
        raise CloneError(
            f"checked out {head} from {display_url!r}, but {commit} was requested; "
            "the working tree is not the commit to build"
        )
    return commit


async def _fetch_target(
    git: _Git, repository: Repository, depth: int | None, display_url: str
) -> str:
    """Fetch what `repository` names and return the full SHA to check out."""
    if repository.commit:
        commit = repository.commit.strip().lower()
        if not _HEX.fullmatch(commit):
            raise CloneError(
                f"invalid commit {repository.commit!r} for {display_url!r}: use a "
                "hexadecimal SHA of 4 to 64 digits"
            )
        if depth is None:
            return await _fetch_commit(git, commit, display_url)
        return await _fetch_commit_shallow(
            git, commit, repository.branch, depth, display_url
        )

    branch = repository.branch
    source = f"refs/heads/{branch}" if branch else "HEAD"
    target = f"refs/remotes/origin/{branch}" if branch else "refs/remotes/origin/HEAD"
    refspecs = [f"+{source}:{target}"]
    if depth is None and not branch:
        refspecs += [_BRANCHES, _TAGS]
    try:
        await git.fetch(refspecs, depth, display_url)
    except CloneError as no_branch:
        if not branch:
            raise
        # A tag submission names its tag where a push names its branch.
        source = f"refs/tags/{branch}"
        try:
            await git.fetch([f"+{source}:{target}"], depth, display_url)
        except CloneError:
            raise CloneError(
                f"{no_branch}; there is no tag of that name either, so check the "
                "branch or tag name"
            ) from no_branch
    sha = await git.resolve(target)
    if sha is None:
        raise CloneError(f"{display_url!r} has no {source} after fetching it")
    return sha


async def _fetch_commit(git: _Git, commit: str, display_url: str) -> str:
    await git.fetch([_BRANCHES, _TAGS], None, display_url)
    found = await git.resolve(commit)
    if found is None and _FULL_SHA.fullmatch(commit):
        # A commit on no branch or tag (a pull request head, say) can still be
        # fetched by SHA when the server allows it.
        await git.fetch([commit], None, display_url, check=False)
        found = await git.resolve(commit)
    if found is None:
        raise CloneError(
            f"commit {commit} not found in {display_url!r}: it is in no branch or tag "
            "and the server did not send it by SHA; check the commit and the URL"
        )
    return found


async def _fetch_commit_shallow(
    git: _Git, commit: str, branch: str | None, depth: int, display_url: str
) -> str:
    refused = "a short SHA cannot be fetched directly"
    if _FULL_SHA.fullmatch(commit):
        direct = await git.fetch([commit], depth, display_url, check=False)
        if direct.returncode == 0 and await git.resolve(commit):
            return commit
        refused = _explain(direct.message)
        log.warning(
            "fetching commit %s by SHA from %s failed, so fetching branches with "
            "increasing depth: %s",
            commit,
            display_url,
            refused,
        )
        git.note(
            f"fetching commit {commit} by SHA failed; fetching branches with "
            f"increasing depth from {depth}"
        )

    source = f"+refs/heads/{branch}:refs/remotes/origin/{branch}" if branch else None
    tried: list[int] = []
    for round_ in range(MAX_DEEPEN_ROUNDS):
        tried.append(depth * 2**round_)
        await git.fetch([source or _BRANCHES], tried[-1], display_url)
        found = await git.resolve(commit)
        if found is not None:
            return found
        shallow = await git.run(
            "rev-parse", "--is-shallow-repository", action="checking the history"
        )
        if shallow.stdout.strip() != "true":
            break  # The whole history is here, so a deeper fetch finds nothing new.
    where = f"branch {branch!r}" if branch else "any branch"
    raise CloneError(
        f"commit {commit} not found in {display_url!r} at depth {depth}: fetching it "
        f"by SHA failed ({refused}), and {where} fetched at depth "
        f"{', '.join(map(str, tried))} does not contain it; check the commit, or "
        "raise the clone depth"
    )


async def _update_submodules(git: _Git, depth: int | None, display_url: str) -> None:
    # `submodule update --init` resolves relative URLs against remote.origin.url,
    # which is the superproject's real URL.
    args = ["submodule", "update", "--init", "--recursive"]
    if depth is not None:
        args.append(f"--depth={depth}")
    await git.run(*args, action=f"updating the submodules of {display_url!r}")


async def _require_lfs(git: _Git, display_url: str) -> None:
    version = await git.run("lfs", "version", action="git lfs", check=False)
    if version.returncode != 0:
        raise CloneError(
            f"Git LFS content of {display_url!r} was requested, but git-lfs is not "
            "installed on this executor (`git lfs version` failed); install the "
            "Debian package git-lfs"
        )


async def _pull_lfs(git: _Git, submodules: bool, display_url: str) -> None:
    paths = [git.dest]
    if submodules:
        listing = await git.run(
            "submodule", "foreach", "--quiet", "--recursive", "pwd",
            action="listing the submodules",
        )  # fmt: skip
        paths += [Path(line) for line in listing.stdout.splitlines() if line]
    for path in paths:
        await _pull_lfs_in(git, path, display_url)


async def _pull_lfs_in(git: _Git, path: Path, display_url: str) -> None:
    action = f"fetching Git LFS objects of {display_url!r}"
    await git.run("lfs", "install", "--local", cwd=path, action="git lfs install")
    await git.run("lfs", "pull", cwd=path, action=action)
    listing = await git.run("lfs", "ls-files", cwd=path, action=action)
    # Each line is "<oid> <* or -> <path>"; "-" marks a file left as a pointer.
    pointers = [
        line.split(" ", 2)[2]
        for line in listing.stdout.splitlines()
        if line.count(" ") >= 2 and line.split(" ", 2)[1] == "-"
    ]
    if pointers:
        raise CloneError(
            f"{action} failed: {len(pointers)} file(s) are still LFS pointers "
            f"({', '.join(pointers[:5])}); check that the LFS server has them"
        )


def make_workdir(root: str, run_id: str) -> Path:
    """Create a private, empty directory for one run's clone under `root`."""
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=root))


def remove_workdir(path: Path) -> None:
    """Delete a run's clone directory; a missing one is fine."""
    shutil.rmtree(path, ignore_errors=True)


def pack(source: Path, archive: Path) -> None:
    """Write `source`'s tree, `.git` included, as an uncompressed tar to `archive`.

    Entries are relative to `source`, so extracting at /workspace recreates it
    there. Symlinks are stored as links, never followed.
    """
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(source)):
            tar.add(source / entry, arcname=entry, recursive=True)
