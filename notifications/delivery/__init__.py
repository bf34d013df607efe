"""Delivery primitives: Redis dedup leases, global token buckets, circuit breakers and retry backoff."""
