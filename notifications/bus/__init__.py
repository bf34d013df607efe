"""Kafka plumbing shared by every role: topic registry, client configuration, envelopes, runner."""
