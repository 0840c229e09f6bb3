"""Benchmarks that print JSON figures (``python -m bench.<name>``); none is a timed test."""
