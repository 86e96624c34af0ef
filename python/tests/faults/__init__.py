"""Fault-injection rows of docs/guarantees.md, run against real processes."""
