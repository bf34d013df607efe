"""Prometheus metrics of the preferences app (cache behaviour, fail-open decisions)."""

from prometheus_client import Counter

__all__ = ["CACHE_ERRORS", "CACHE_LOOKUPS", "FREQUENCY_CAP_FAIL_OPEN"]

CACHE_LOOKUPS = Counter(
    "preferences_cache_lookups_total", "Preference states looked up, by outcome", ["outcome"]
)  # outcome: hit | miss | bypass (Redis unavailable, read from the database)
CACHE_ERRORS = Counter(
    "preferences_cache_errors_total", "Redis errors in the preference cache, by operation", ["op"]
)  # op: read | warm | publish | delete
FREQUENCY_CAP_FAIL_OPEN = Counter(
    "preferences_frequency_cap_fail_open_total", "Frequency-cap checks allowed because Redis was unavailable"
)
