"""Fault-injection rows of RELIABILITY.md (Tier 1), run against real processes."""
