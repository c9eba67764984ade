"""The scheduler: turns submitted runs into queued runs and dispatch orders."""

from .service import Scheduler

__all__ = ["Scheduler"]
