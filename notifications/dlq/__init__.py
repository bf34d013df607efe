"""DLQ triage and replay: dead letters stored, categorised, paged on the unknown, replayed from admin."""
