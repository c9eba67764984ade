"""The Stasis CI processes: gateway, scheduler, executor, logsink and the CLI."""
