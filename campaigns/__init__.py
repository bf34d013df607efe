"""Campaigns: audience predicates, the batched fanout orchestrator and live progress."""
