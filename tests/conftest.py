"""Settings shared by the whole suite."""

from hypothesis import HealthCheck, settings

# Property-based tests run a fixed, derandomized budget: the same examples on every run and
# machine (no example database), so CI time is bounded and a failure reproduces.
settings.register_profile(
    "hpcdiff",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("hpcdiff")
