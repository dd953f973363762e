"""Hypothesis settings for the suite's property and fuzz tests: bounded in examples and time,
so CI runs them on every change; ``SPLADE_ES_FUZZ_EXAMPLES`` raises the count for a longer
run (``SPLADE_ES_FUZZ_EXAMPLES=20000 pytest tests/unit/test_serve_fuzz.py``)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ = settings(
    max_examples=int(os.environ.get("SPLADE_ES_FUZZ_EXAMPLES", "150")),
    deadline=None,  # a shared CI machine's pauses are not the parser's
    database=None,  # no .hypothesis folder in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
