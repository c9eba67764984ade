"""Credentials for cloning, and the git environment that carries them.

A clone's credential reaches git only through channels that leave no trace in
argv, the remote URL, `.git/config` or the workspace:

- HTTP basic: a credential helper script, configured for the repository's
  origin (scheme, host and port) through `GIT_CONFIG_COUNT` variables, reads
  the username and password from a file in a private directory.
- Bearer token: an `Authorization: Bearer` header in `http.<origin>.extraHeader`,
  set through `GIT_CONFIG_COUNT` variables.
- SSH key: `GIT_SSH_COMMAND` points ssh at a config file whose `Match` block
  offers the key file only to the repository's host and port.

Every file lives in a private temporary directory (mode 0700, files 0600)
outside the workspace, removed when the clone ends. `Scrubber` removes every
credential value and URL userinfo from text before it leaves the clone.
"""

import base64
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import msgspec

from .masking import DEFAULT_MASK, DEFAULT_MIN_LENGTH, SecretMasker

CredentialKind = Literal["token", "basic", "ssh"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^/:]+):(?!//)")
_HTTP_SCHEMES = ("http", "https")
_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")


class CredentialMismatchError(ValueError):
    """Raised when the kind of credential does not fit the repository URL."""


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """One credential for a repository: a token, a username and password, or a key.

    Set exactly one kind: `token` (sent as `Authorization: Bearer`), `username`
    with `password` (HTTP basic), or `ssh_private_key` (OpenSSH key text without
    a passphrase). `known_hosts` is the text of a known_hosts file for the SSH
    host. When it is missing, ssh checks against the executor's own known_hosts
    files. `strict_host_key_checking=False` accepts an unknown or changed host
    key.
    """

    token: str | None = None
    username: str | None = None
    password: str | None = None
    ssh_private_key: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: bool = True

    def __post_init__(self) -> None:
        kinds = [
            self.token is not None,
            self.username is not None or self.password is not None,
            self.ssh_private_key is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError(
                "invalid credentials: set exactly one of `token`, "
                "`username` with `password`, or `ssh_private_key`"
            )
        if self.known_hosts is not None and self.ssh_private_key is None:
            raise ValueError(
                "invalid credentials: `known_hosts` applies only with "
                "`ssh_private_key`; remove it or add the key"
            )
        for name in ("token", "username", "password"):
            self._check_header_safe(name, getattr(self, name))
        if kinds[1] and (not self.username or not self.password):
            raise ValueError(
                "invalid credentials: HTTP basic needs both a non-empty "
                "`username` and `password`"
            )
        if self.ssh_private_key is not None and not self.ssh_private_key.strip():
            raise ValueError("invalid credentials: `ssh_private_key` is empty")

    @staticmethod
    def _check_header_safe(name: str, value: str | None) -> None:
        # A newline in a header value or helper response would inject more fields.
        if value is None:
            return
        if not value or _CONTROL.search(value):
            raise ValueError(
                f"invalid credentials: `{name}` is empty or contains a control "
                "character such as a newline; pass the bare value"
            )

    def __repr__(self) -> str:
        return f"Credentials(kind={self.kind!r}, values=<hidden>)"

    @property
    def kind(self) -> CredentialKind:
        """The kind of credential that is set."""
        if self.token is not None:
            return "token"
        if self.ssh_private_key is not None:
            return "ssh"
        return "basic"

    def secret_values(self) -> list[str]:
        """Return every value that must never appear in output, longest first."""
        values = [self.token, self.password, self.ssh_private_key]
        if self.username and self.password:
            # The form a basic Authorization header carries, as in an HTTP trace.
            pair = f"{self.username}:{self.password}".encode()
            values.append(base64.b64encode(pair).decode())
        if self.username and len(self.username) >= DEFAULT_MIN_LENGTH:
            # A short username such as "git" would mask ordinary words.
            values.append(self.username)
        return sorted((v for v in values if v), key=len, reverse=True)


class Scrubber:
    """Removes credential values and URL userinfo from text."""

    def __init__(self, secrets: list[str]) -> None:
        # min_length=1: a short password still must not show up in a message.
        self._masker = SecretMasker(secrets, min_length=1) if secrets else None

    def scrub(self, text: str) -> str:
        """Return `text` with every credential value and URL userinfo masked."""
        if self._masker is not None:
            text = self._masker.mask(text)
        return _URL_USERINFO.sub(rf"\g<scheme>{DEFAULT_MASK}@", text)


@dataclass(frozen=True)
class Remote:
    """A repository URL split into what git is given and how to scope a credential."""

    url: str
    """The URL for git: never contains a password."""
    transport: Literal["http", "ssh", "local"]
    origin: str
    """`scheme://host[:port]` for HTTP, `host:port` for SSH, empty for local."""
    host: str
    port: int


def parse_remote(url: str) -> tuple[Remote, Credentials | None]:
    """Split `url` into a `Remote` and any `user:password` it embeds.

    The userinfo of an HTTP URL is removed, so it never reaches `.git/config`.
    A `user:password` pair comes back as basic credentials, and a bare username
    is dropped. An SSH URL keeps its login name, which is not a secret.
    """
    scp = _SCP_LIKE.match(url)
    if "://" not in url and scp and not url.startswith(("/", ".")):
        remote = Remote(url, "ssh", f"{scp['host']}:22", scp["host"], 22)
        return remote, None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _HTTP_SCHEMES:
        return _parse_http(parts, scheme)
    if scheme in _SSH_SCHEMES:
        host = parts.hostname or ""
        port = parts.port or 22
        return Remote(url, "ssh", f"{host}:{port}", host, port), None
    return Remote(url, "local", "", "", 0), None


def _parse_http(parts: SplitResult, scheme: str) -> tuple[Remote, Credentials | None]:
    host = parts.hostname or ""
    netloc_host = f"[{host}]" if ":" in host else host
    netloc = f"{netloc_host}:{parts.port}" if parts.port else netloc_host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    port = parts.port or (443 if scheme == "https" else 80)
    remote = Remote(clean, "http", f"{scheme}://{netloc}", host, port)
    embedded = None
    if parts.username and parts.password:
        embedded = Credentials(
            username=unquote(parts.username), password=unquote(parts.password)
        )
    return remote, embedded


@contextmanager
def git_auth_environment(
    credentials: Credentials | None, remote: Remote
) -> Iterator[dict[str, str]]:
    """Yield the environment variables that hand `credentials` to git for `remote`.

    Files that carry the credential live in a private temporary directory that
    is removed when the block ends. Raises CredentialMismatchError when the
    kind of credential does not fit the URL's transport.
    """
    # Reset credential helpers from the executor's own git config first, so a
    # global `credential.helper=store` never saves the job's password to disk.
    settings = [("credential.helper", "")]
    if credentials is None:
        yield _config_env(settings)
        return
    _check_transport(credentials, remote)
    private = Path(tempfile.mkdtemp(prefix="stasis-git-auth-"))
    try:
        os.chmod(private, 0o700)
        env: dict[str, str] = {}
        if credentials.kind == "token":
            header = f"Authorization: Bearer {credentials.token}"
            settings.append((f"http.{remote.origin}.extraHeader", header))
        elif credentials.kind == "basic":
            helper = _write_credential_helper(private, credentials)
            settings.append((f"credential.{remote.origin}.helper", helper))
        else:
            env["GIT_SSH_COMMAND"] = _write_ssh_config(private, credentials, remote)
            env["GIT_SSH_VARIANT"] = "ssh"
        yield {**env, **_config_env(settings)}
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _check_transport(credentials: Credentials, remote: Remote) -> None:
    wanted = "ssh" if credentials.kind == "ssh" else "http"
    if remote.transport != wanted:
        raise CredentialMismatchError(
            f"{credentials.kind} credentials need an {wanted.upper()} repository "
            f"URL, but the URL uses {remote.transport} transport; change the "
            "URL or the kind of credential"
        )


def _config_env(settings: list[tuple[str, str]]) -> dict[str, str]:
    # Environment config is read last, after the global and local files.
    env = {"GIT_CONFIG_COUNT": str(len(settings))}
    for index, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


def _write_credential_helper(private: Path, credentials: Credentials) -> str:
    answer = private / "basic"
    _write_private(
        answer, f"username={credentials.username}\npassword={credentials.password}\n"
    )
    script = private / "credential-helper"
    # Shell builtins only, because the helper must run even with a minimal PATH.
    # It responds to `get` and ignores `store` and `erase`.
    _write_private(
        script,
        "#!/bin/sh\n"
        'test "$1" = get || exit 0\n'
        'while IFS= read -r line && test -n "$line"; do :; done\n'
        "while IFS= read -r line; do printf '%s\\n' \"$line\"; done < "
        f"{shlex.quote(str(answer))}\n",
    )
    os.chmod(script, 0o700)
    return "!" + shlex.quote(str(script))


def _write_ssh_config(private: Path, credentials: Credentials, remote: Remote) -> str:
    key = private / "id_key"
    assert credentials.ssh_private_key is not None
    # OpenSSH rejects a key file without a final newline as "invalid format".
    key_text = credentials.ssh_private_key.replace("\r\n", "\n").strip() + "\n"
    _write_private(key, key_text)
    lines = [
        f'Match host "{remote.host}" exec "test %p = {remote.port}"',
        f'    IdentityFile "{key}"',
        "    IdentitiesOnly yes",
        "    IdentityAgent none",
    ]
    if credentials.known_hosts is not None:
        known = private / "known_hosts"
        _write_private(known, credentials.known_hosts.strip() + "\n")
        lines += [
            f'    UserKnownHostsFile "{known}"',
            "    GlobalKnownHostsFile /dev/null",
        ]
    elif not credentials.strict_host_key_checking:
        lines.append("    UserKnownHostsFile /dev/null")
    strict = "yes" if credentials.strict_host_key_checking else "no"
    lines += [f"    StrictHostKeyChecking {strict}", "Host *", "    BatchMode yes"]
    config = private / "ssh_config"
    _write_private(config, "\n".join(lines) + "\n")
    return f"ssh -F {shlex.quote(str(config))}"
