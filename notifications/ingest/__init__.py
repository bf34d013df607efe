"""The event ingest API: producers POST events and get 202 once the outbox rows are committed."""
