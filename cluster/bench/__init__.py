"""Benchmarks behind `microturn bench ...`: each prints one JSON object as its last stdout line."""
