"""Hypothesis profiles for the property-based tests (``tests/test_fuzz_*.py``).

``HYPOTHESIS_PROFILE=ci`` (the default) keeps every fuzz file well under a minute on a slow
2-core machine; ``HYPOTHESIS_PROFILE=long`` runs twenty times the examples for a soak before a
release. No deadline: a shared CI machine's hiccups must not fail a test; the tests carry
``pytest.mark.timeout`` against real hangs instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=1_200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> int:
    """``n`` examples under the ci profile, scaled up with the active profile."""
    return max(1, n * settings.default.max_examples // 60)
