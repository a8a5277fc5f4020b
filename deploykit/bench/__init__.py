"""Benchmarks: offline (engines side by side in subprocesses) and online (load against a server)."""
