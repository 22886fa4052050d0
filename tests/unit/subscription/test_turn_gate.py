"""The turn gate: at most `per_turn` subscription writes start per turn of the event loop, the others
wait in order (subscription/turns.py)."""

from __future__ import annotations

import asyncio
import time

from chiefofstate.subscription.turns import TurnGate


async def test_at_most_per_turn_writes_start_in_one_turn_and_every_waiter_gets_through_in_order() -> None:
    gate = TurnGate(per_turn=2)
    passed: list[int] = []

    async def write(number: int) -> None:
        await gate.turn()
        passed.append(number)

    tasks = [asyncio.create_task(write(number)) for number in range(7)]
    counts = []
    for _ in range(30):
        await asyncio.sleep(0)  # one turn of the loop
        counts.append(len(passed))
    assert passed == list(range(7))
    assert all(later - earlier <= 2 for earlier, later in zip(counts, counts[1:], strict=False))
    assert counts[0] <= 2 and gate.waiting == 0
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    gate = TurnGate(per_turn=1)
    first, second, third = (asyncio.create_task(gate.turn()) for _ in range(3))
    await asyncio.sleep(0)
    assert first.done() and gate.waiting == 2  # one pass this turn; the others wait
    second.cancel()
    await asyncio.wait_for(third, 1)
    assert second.cancelled() and gate.waiting == 0


async def test_long_turns_are_followed_by_pauses_in_which_no_write_starts() -> None:
    async def passes_in(seconds: float, gate: TurnGate) -> int:
        passed = 0

        async def keep_writing() -> None:
            nonlocal passed
            while True:
                await gate.turn()
                passed += 1
                await asyncio.sleep(0)

        writers = [asyncio.create_task(keep_writing()) for _ in range(20)]
        await asyncio.sleep(seconds)
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        return passed

    extra = [0.0]

    def slow_clock() -> float:  # every turn seems to take 5 ms more than it does
        extra[0] += 0.005
        return time.monotonic() + extra[0]

    slow = TurnGate(per_turn=4, clock=slow_clock)
    passed = await passes_in(0.2, slow)
    # Each batch seems to take 5 ms, so the next waits 10 ms: in 0.2 s at most about 20 batches of 4
    # (timers never fire early, however busy the machine), where without pauses there would be
    # thousands.
    assert slow.pauses >= 1 and 4 <= passed <= 4 * (20 + 3)
