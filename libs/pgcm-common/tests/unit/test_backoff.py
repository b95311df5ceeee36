from __future__ import annotations

import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.backoff import Backoff


def test_caps_double_until_the_maximum() -> None:
    backoff = Backoff(timedelta(milliseconds=100), timedelta(seconds=1), rng=random.Random(1))
    caps = []
    for _ in range(6):
        caps.append(backoff.cap())
        backoff.next_delay()
    assert caps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_reset_starts_small_again() -> None:
    backoff = Backoff(timedelta(milliseconds=100), timedelta(seconds=1))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.cap() == 0.1


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=50))
def test_every_delay_lies_between_half_the_initial_and_the_maximum(seed: int, steps: int) -> None:
    backoff = Backoff(timedelta(milliseconds=50), timedelta(seconds=2), rng=random.Random(seed))
    delays = [backoff.next_delay() for _ in range(steps)]
    assert all(0.025 <= delay <= 2.0 for delay in delays)


@pytest.mark.parametrize(
    ("initial", "maximum", "multiplier"),
    [
        (timedelta(0), timedelta(1), 2.0),
        (timedelta(2), timedelta(1), 2.0),
        (timedelta(1), timedelta(2), 0.5),
    ],
)
def test_nonsense_parameters_are_refused(
    initial: timedelta, maximum: timedelta, multiplier: float
) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum, multiplier)


def test_a_very_long_outage_never_overflows() -> None:
    backoff = Backoff(timedelta(milliseconds=100), timedelta(seconds=5))
    for _ in range(5000):
        assert backoff.next_delay() <= 5.0
