"""Exceptions raised by the shared event library.

StasisEventError
├── InvalidTransition   an event that does not fit the job's current state
├── NatsUnavailable     NATS could not be reached or has no JetStream
└── StreamConflict      an append lost a race on the job's subject
"""


class StasisEventError(Exception):
    """Base class of every error raised by `libs.events`."""


class InvalidTransition(StasisEventError):
    """Raised by the fold for an event that the job's state does not allow."""


class NatsUnavailable(StasisEventError):
    """Raised when no NATS server with JetStream answers at the configured URL."""


class StreamConflict(StasisEventError):
    """Raised when an append expected another last sequence on the job's subject."""
