"""The executor: pulls dispatch orders and runs their pipelines in Docker."""
