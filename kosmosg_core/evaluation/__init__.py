"""Benchmark protocols of the Kosmos-G and GILL papers, run on our implementation."""
