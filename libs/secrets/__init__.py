"""Secret variables and clone credentials of jobs, kept encrypted until a run ends."""

from .vault import JobSecrets, SecretsUnavailable, SecretVault, load_or_create_key

__all__ = ["JobSecrets", "SecretVault", "SecretsUnavailable", "load_or_create_key"]
