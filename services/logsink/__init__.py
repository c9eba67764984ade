"""The logsink: persists log chunks from the logs stream to files."""

from .service import LogSink

__all__ = ["LogSink"]
