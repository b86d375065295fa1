"""Shared hypothesis settings: deterministic, no deadlines (symbolic compilation is slow)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "gaugemath", deadline=None, derandomize=True, max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("gaugemath")
