"""Helpers shared by the tests: backend cases, the golden sign table, the hook-loop meter oracle, model snapshots."""
