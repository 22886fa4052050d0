import asyncio

import pytest
import uvloop

from chiefofstate.node.event_loop import run_on_event_loop


async def loop_type() -> type:
    return type(asyncio.get_running_loop())


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_the_chosen_loop_runs_the_coroutine(choice: str) -> None:
    ran_on = run_on_event_loop(loop_type(), choice)
    assert (ran_on is uvloop.Loop) == (choice == "uvloop")
    assert issubclass(ran_on, asyncio.AbstractEventLoop)
