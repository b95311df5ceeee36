"""Capped, jittered exponential backoff for reconcile loops.

The original's retry interval was a setting nothing read, so its proxy busy-looped
against a dead PgBouncer. Here every retrying loop asks a ``Backoff`` how long to wait.
Full jitter (a uniform draw below the current cap) spreads the retries of many proxies
that lost the same etcd member at the same moment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import final

__all__ = ["Backoff"]


@final
@dataclass(slots=True)
class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn with full jitter.

    ``reset()`` after a success so the next failure starts small again.
    """

    initial: timedelta = timedelta(milliseconds=100)
    maximum: timedelta = timedelta(seconds=5)
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.initial <= timedelta(0) or self.maximum < self.initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1")

    @property
    def attempt(self) -> int:
        """Return how many delays were handed out since the last reset."""
        return self._attempt

    def cap(self) -> float:
        """Return the upper bound, in seconds, of the next delay."""
        # The exponent is clamped: after a long outage (thousands of retries) the float
        # power would overflow; the cap was reached long before anyway.
        grown = self.initial.total_seconds() * self.multiplier ** min(self._attempt, 64)
        return min(grown, self.maximum.total_seconds())

    def next_delay(self) -> float:
        """Return the next delay in seconds and advance; never below ``initial / 2``."""
        cap = self.cap()
        self._attempt += 1
        floor = self.initial.total_seconds() / 2
        return max(floor, self.rng.uniform(0, cap))

    def reset(self) -> None:
        """Start again from ``initial`` (call after a success)."""
        self._attempt = 0
