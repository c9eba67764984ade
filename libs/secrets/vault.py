"""The secret vault: a JetStream key-value bucket of encrypted values.

The gateway puts a job's secret variables and clone credentials here, and the
job's events carry only their names. A key-value bucket is a stream too, so
values are encrypted with Fernet (AES-128-CBC and HMAC-SHA256, from the
`cryptography` package) before they reach NATS. A reader of the stream without
the key gets only ciphertext. The bucket's TTL removes what no run
came to collect; the executor purges a job's entry when its run ends.

Every gateway and executor of a deployment needs the same key: set
`secrets.key`, or share `secrets.key_file`. On one host, the key file is
created on first use under the data directory.
"""

import logging
import os
from pathlib import Path

import msgspec
from cryptography.fernet import Fernet, InvalidToken
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

BUCKET = "STASIS_SECRETS"


class SecretsUnavailable(Exception):
    """Raised when a job's secrets are gone (expired or purged) or cannot be read."""


class JobSecrets(msgspec.Struct, frozen=True, kw_only=True):
    """The secret variables and clone credentials the vault keeps for one job."""

    variables: dict[str, str] = {}
    credentials: dict[str, str | bool | None] | None = None

    def values(self) -> list[str]:
        """Return every secret value, for log masking."""
        found = list(self.variables.values())
        for name in ("token", "password", "ssh_private_key"):
            value = (self.credentials or {}).get(name)
            if isinstance(value, str) and value:
                found.append(value)
        return found


def load_or_create_key(key: str | None, key_file: str) -> bytes:
    """Return the Fernet key: `key` if given, else the key file, created if absent.

    Raises ValueError naming the setting when the key is not a valid Fernet key.
    """
    if key:
        material = key.encode()
        source = "secrets.key"
    else:
        path = Path(key_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(Fernet.generate_key())
            log.info("created the secrets key file %s", path)
        material = path.read_bytes().strip()
        source = f"secrets.key_file {str(path)!r}"
    try:
        Fernet(material)
    except ValueError as exc:
        raise ValueError(
            f"invalid {source}: it must hold a Fernet key (32 bytes, URL-safe "
            "base64); make one with `python -c 'from cryptography.fernet import "
            "Fernet; print(Fernet.generate_key().decode())'`"
        ) from exc
    return material


class SecretVault:
    """Encrypted per-job secrets in a JetStream key-value bucket."""

    def __init__(self, kv: KeyValue, key: bytes) -> None:
        self._kv = kv
        self._fernet = Fernet(key)

    @classmethod
    async def open(
        cls, js: JetStreamContext, key: bytes, ttl: float, replicas: int = 1
    ) -> "SecretVault":
        """Open the bucket, creating it with `ttl` seconds of life per entry."""
        try:
            kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=BUCKET,
                    description="Stasis CI job secrets, Fernet-encrypted",
                    ttl=ttl,
                    storage=StorageType.FILE,
                    replicas=replicas,
                )
            )
        return cls(kv, key)

    async def put(self, job_id: str, secrets: JobSecrets) -> None:
        """Store a job's secrets, encrypted."""
        token = self._fernet.encrypt(msgspec.json.encode(secrets))
        await self._kv.put(job_id, token)

    async def get(self, job_id: str) -> JobSecrets:
        """Return a job's secrets; raise SecretsUnavailable when they are gone."""
        try:
            entry = await self._kv.get(job_id)
        except KeyNotFoundError as exc:
            raise SecretsUnavailable(
                f"the secrets of job {job_id} are gone: they are removed when a run "
                "ends and expire after secrets.ttl; submit the job again with them"
            ) from exc
        try:
            plain = self._fernet.decrypt(entry.value or b"")
        except InvalidToken as exc:
            raise SecretsUnavailable(
                f"the secrets of job {job_id} cannot be decrypted: this process has "
                "another secrets.key than the gateway that stored them"
            ) from exc
        return msgspec.json.decode(plain, type=JobSecrets)

    async def purge(self, job_id: str) -> None:
        """Remove a job's secrets and every older revision of them."""
        await self._kv.purge(job_id)
