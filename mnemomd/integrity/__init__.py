"""Integrity analysis (AIP): settings, analysis backends, circuit breaker, the analyzer,
and session window / drift state kept as JSON so replicas can share it (SPEC §5)."""
