"""API keys of the gateway: loading them, identifying a request's key, job ownership.

A key is stored only as its SHA-256 digest. A presented key is hashed and
compared with every stored digest by `hmac.compare_digest`, without stopping at
a match, so the time taken does not tell how close a guess was. A key is known
to the rest of the system by its id, the first 8 hex digits of its digest: jobs
record it as `submitted_by`, and logs and error messages name it. The id is not
enough to authenticate.
"""

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from libs.config.model import AuthConfig

from .keys import PROJECTION_KEY
from .problems import ProblemError, problem

log = logging.getLogger(__name__)

SHA256_PREFIX = "sha256:"
ADMIN_PREFIX = "admin:"
MIN_KEY_LENGTH = 16
KEY_ID_LENGTH = 8
REALM = "stasis"


class KeyConfigError(Exception):
    """Raised for an API key setting or key file that cannot be used."""


@dataclass(frozen=True)
class StoredKey:
    """One accepted API key: its SHA-256 digest, id and whether it is an admin key."""

    digest: bytes
    key_id: str
    admin: bool


@dataclass(frozen=True)
class Caller:
    """The API key a request was authenticated with."""

    key_id: str
    admin: bool


CALLER_KEY = web.RequestKey("caller", Caller)
"""Set on every request that presented a valid key; absent with auth off."""


def key_digest(key: str) -> bytes:
    """Return the SHA-256 digest of a plain-text key."""
    return hashlib.sha256(key.encode()).digest()


def parse_key(entry: str, admin: bool, source: str) -> StoredKey:
    """Parse a plain-text key or a `sha256:<64 hex digits>` digest into a StoredKey.

    `source` names where the entry came from, for the error message; the
    message never contains the entry itself.
    """
    if entry.startswith(SHA256_PREFIX):
        hex_digest = entry.removeprefix(SHA256_PREFIX).strip().lower()
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise KeyConfigError(
                f"{source}: a sha256: key must be followed by 64 hex digits, as "
                "printed by `printf %s KEY | sha256sum`"
            )
    else:
        if len(entry) < MIN_KEY_LENGTH:
            raise KeyConfigError(
                f"{source}: an API key must have at least {MIN_KEY_LENGTH} "
                "characters; generate one with `openssl rand -hex 32`"
            )
        digest = key_digest(entry)
    return StoredKey(digest=digest, key_id=digest.hex()[:KEY_ID_LENGTH], admin=admin)


def read_key_file(path: str) -> list[StoredKey]:
    """Read a key file: one key a line, `admin:` before an admin key, `#` comments."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KeyConfigError(
            f"cannot read auth.api_key_file {path!r}: {exc.strerror}"
        ) from exc
    keys = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        admin = line.startswith(ADMIN_PREFIX)
        entry = line.removeprefix(ADMIN_PREFIX).strip()
        keys.append(parse_key(entry, admin, f"{path} line {number}"))
    return keys


def load_keys(config: AuthConfig) -> list[StoredKey]:
    """Collect the keys of `auth.api_keys`, `auth.admin_keys` and the key file.

    A key listed both as admin and as a plain key is an admin key. Two distinct
    keys with the same id are rejected, because the id is what owns a job.
    """
    keys = [
        parse_key(entry, False, f"auth.api_keys entry {index + 1}")
        for index, entry in enumerate(config.api_keys)
    ]
    keys += [
        parse_key(entry, True, f"auth.admin_keys entry {index + 1}")
        for index, entry in enumerate(config.admin_keys)
    ]
    if config.api_key_file:
        keys += read_key_file(config.api_key_file)
    return _merge(keys)


def _merge(keys: Iterable[StoredKey]) -> list[StoredKey]:
    by_digest: dict[bytes, StoredKey] = {}
    for key in keys:
        known = by_digest.get(key.digest)
        if known is None or (key.admin and not known.admin):
            by_digest[key.digest] = key
    ids: dict[str, StoredKey] = {}
    for key in by_digest.values():
        if key.key_id in ids:
            raise KeyConfigError(
                f"two API keys share the id {key.key_id} (the first "
                f"{KEY_ID_LENGTH} hex digits of their SHA-256); replace one of them"
            )
        ids[key.key_id] = key
    return list(by_digest.values())


class Authenticator:
    """Decides which paths need a key and which key a request presented."""

    def __init__(
        self, keys: list[StoredKey], public_paths: Iterable[str], enabled: bool
    ) -> None:
        if enabled and not keys:
            raise KeyConfigError(
                "auth.enabled is true but no key is configured; set auth.api_keys, "
                "auth.admin_keys or auth.api_key_file"
            )
        self.enabled = enabled
        self._keys = tuple(keys)
        self._public = tuple(path.rstrip("/") or "/" for path in public_paths)
        self._rejections = _RejectionLog()

    @classmethod
    def from_config(cls, config: AuthConfig) -> "Authenticator":
        """Build the authenticator of `config`, reading the key file if one is set."""
        keys = load_keys(config) if config.enabled else []
        return cls(keys, config.public_paths, config.enabled)

    def is_public(self, path: str) -> bool:
        """Whether `path` is one of the public paths or below one."""
        return any(
            path == public or path.startswith(public.rstrip("/") + "/")
            for public in self._public
        )

    def identify(self, presented: str) -> Caller | None:
        """Return the caller whose key is `presented`, or None for an unknown key."""
        digest = key_digest(presented)
        found: StoredKey | None = None
        for stored in self._keys:
            # Every stored key is compared, match or not, so the time taken does
            # not depend on which key matched.
            matches = hmac.compare_digest(digest, stored.digest)
            if matches and found is None:
                found = stored
        if found is None:
            return None
        return Caller(key_id=found.key_id, admin=found.admin)

    def record_rejection(self, request: web.Request) -> None:
        """Count a request with an invalid key and log the count now and then."""
        self._rejections.record(request)


AUTHENTICATOR_KEY = web.AppKey("authenticator", Authenticator)


def presented_key(request: web.Request) -> str | None:
    """Return the key in `X-API-Key` or in `Authorization: Bearer`, or None."""
    header_key = request.headers.get("X-API-Key", "").strip()
    if header_key:
        return header_key
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def route_path(request: web.Request) -> str:
    """Return the matched route's path template, or the raw path when none matched.

    Public paths are checked against the route that will handle the request,
    so no spelling of a URL reaches a handler under another route's rules.
    """
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 401 to a request without a valid key unless its path is public."""
    authenticator = request.app[AUTHENTICATOR_KEY]
    if not authenticator.enabled or authenticator.is_public(route_path(request)):
        return await handler(request)

    presented = presented_key(request)
    if presented is None:
        return _unauthorized(
            request,
            "Missing API key",
            "send an API key in the X-API-Key header or as Authorization: Bearer KEY",
            f'Bearer realm="{REALM}"',
        )
    caller = authenticator.identify(presented)
    if caller is None:
        authenticator.record_rejection(request)
        return _unauthorized(
            request,
            "Invalid API key",
            "the API key is not one of the gateway's keys; check it for typing "
            "errors or ask the operator for a key",
            f'Bearer realm="{REALM}", error="invalid_token"',
        )

    request[CALLER_KEY] = caller
    return await handler(request)


def _unauthorized(
    request: web.Request, title: str, detail: str, challenge: str
) -> web.Response:
    response = problem(401, title, detail, request.path)
    response.headers["WWW-Authenticate"] = challenge
    return response


class _RejectionLog:
    """Logs rejected keys at most once a minute, with the count since the last line."""

    interval = 60.0

    def __init__(self) -> None:
        self._count = 0
        self._last = float("-inf")

    def record(self, request: web.Request) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        log.warning(
            "rejected %d request(s) with an invalid API key in the last %.0f s; "
            "latest from %s for %s",
            self._count,
            min(now - self._last, self.interval),
            request.remote,
            request.path,
        )
        self._count = 0
        self._last = now


def caller_of(request: web.Request) -> Caller | None:
    """Return the request's caller, or None when auth is off or the path is public."""
    return request.get(CALLER_KEY)


def caller_id(request: web.Request) -> str | None:
    """Return the key id to record as a job's `submitted_by`, or None with auth off."""
    caller = caller_of(request)
    return caller.key_id if caller is not None else None


def may_access(caller: Caller | None, submitted_by: str | None) -> bool:
    """Whether `caller` may read or change a job that `submitted_by` submitted.

    With auth off there is no caller and every job is open. A job submitted
    without a key (before auth was turned on) is open to admin keys only.
    """
    if caller is None or caller.admin:
        return True
    return submitted_by == caller.key_id


@web.middleware
async def check_job_access(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Answer 403 when a route's `{job_id}` names a job of another key."""
    job_id = request.match_info.get("job_id")
    caller = caller_of(request)
    projection = request.app.get(PROJECTION_KEY)
    if job_id is None or caller is None or caller.admin or projection is None:
        return await handler(request)

    job = projection.get(job_id)
    if job is None:
        # Wait like the handlers do for `min_seq`, so a job that is just being
        # applied is checked here rather than found by the handler unchecked.
        min_seq = (
            request.query.get("min_seq") or request.headers.get("Stasis-Min-Seq") or ""
        )
        if min_seq.isascii() and min_seq.isdecimal():
            await projection.wait_for(int(min_seq))
            job = projection.get(job_id)
    if job is not None and not may_access(caller, job.submitted_by):
        raise ProblemError(
            403,
            "Forbidden",
            f"API key {caller.key_id} has no access to job {job_id}: a job is "
            "open to the key that submitted it and to admin keys",
        )
    return await handler(request)
