"""Hypothesis profiles of the bad-input suite.

* ``pgcm-sample`` (default): 200 examples per property, part of the ordinary test run.
* ``pgcm-fuzz`` (``PGCM_FUZZ=1``, the ``nox -s fuzz`` session): 10 000 examples per
  property. Deadlines are off in both: a slow CI core must not turn a timing hiccup
  into a "flaky" failure; these properties are about correctness, not speed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = 10_000
SAMPLE_EXAMPLES = 200

settings.register_profile(
    "pgcm-sample",
    max_examples=SAMPLE_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "pgcm-fuzz",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # The shrink phase of a found bug is worth its time; the example database lets a
    # re-run start from the failure.
    print_blob=True,
)
settings.load_profile("pgcm-fuzz" if os.environ.get("PGCM_FUZZ") == "1" else "pgcm-sample")
