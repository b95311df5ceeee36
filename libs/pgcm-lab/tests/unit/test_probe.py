from __future__ import annotations

import anyio

from pgcm_lab.probe import NO_ANSWER, bounded


async def test_bounded_returns_the_probes_answer() -> None:
    async def answers() -> bool:
        return False

    assert await bounded(answers, seconds=1) is False


async def test_bounded_gives_no_answer_for_a_probe_that_never_returns() -> None:
    cancelled = anyio.Event()

    async def hangs() -> bool:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return True  # never reached: only cancellation ends sleep_forever

    with anyio.fail_after(2):
        assert await bounded(hangs, seconds=0.05) == NO_ANSWER
    assert cancelled.is_set()
