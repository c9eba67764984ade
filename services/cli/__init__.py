"""The `stasis` command line."""
