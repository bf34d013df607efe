"""Transactional outbox: writing events with the caller's transaction, and relaying them to Kafka."""
