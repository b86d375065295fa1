"""Shared test settings: deterministic hypothesis, no deadlines (symbolic compilation is slow), and
Triton's interpreter for the kernel tests on CPU.

``TRITON_INTERPRET`` is set here, before any test module is collected: Triton reads it when it is
first imported, and collecting other modules (``transformers`` for tests/third_party.py) may import
it before ``tests/test_kernels.py`` is reached.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "gaugemath", deadline=None, derandomize=True, max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("gaugemath")
