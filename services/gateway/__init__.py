"""The gateway: HTTP API, projection of job state, and SSE streams."""

from .service import Gateway

__all__ = ["Gateway"]
