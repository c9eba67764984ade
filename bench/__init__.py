"""Benchmarks of Stasis CI against floors measured in the same run."""
