"""Cloning a job's repository on the executor host and packing it for Docker.

The clone lives in a private directory on the executor's host only until it is
uploaded; containers see the source through a Docker volume filled by the
archive API, never through a bind mount, because the Docker daemon may run on
another host or in a VM that cannot see this filesystem.
"""

import asyncio
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from libs.events import Repository

log = logging.getLogger(__name__)

PIPELINE_FILE = ".stasis-ci.yaml"


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
    repository: Repository, dest: Path, timeout: float, output: list[str]
) -> Checkout:
    """Clone `repository` into `dest` and check out its commit or branch.

    Lines that git prints are appended to `output` for the job's log. Raises
    CloneError naming the URL and what failed, or when `timeout` runs out.
    """
    url = clone_url(repository)
    args = ["clone", "--quiet", "--no-checkout"]
    if repository.branch and not repository.commit:
        args += ["--branch", repository.branch, "--single-branch"]
    args += ["--", url, str(dest)]
    async with asyncio.timeout(timeout):
        try:
            await _git(args, cwd=None, output=output)
            target = repository.commit or "HEAD"
            await _git(
                ["checkout", "--quiet", "--detach", target], cwd=dest, output=output
            )
            commit = (await _git(["rev-parse", "HEAD"], cwd=dest, output=None)).strip()
        except TimeoutError as exc:
            raise CloneError(
                f"cloning {repository.url!r} timed out after {timeout:g}s; raise "
                "executor.timeouts.clone or check that the server answers"
            ) from exc
    return Checkout(path=dest, commit=commit, branch=repository.branch)


async def _git(args: list[str], cwd: Path | None, output: list[str] | None) -> str:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await process.communicate()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    message = stderr.decode(errors="replace").strip()
    if output is not None and message:
        output.extend(message.splitlines())
    if process.returncode != 0:
        raise CloneError(f"git {args[0]} failed (exit {process.returncode}): {message}")
    return stdout.decode(errors="replace")


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
