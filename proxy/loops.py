"""Objects that belong to one event loop (connection pools, transports, clients, groups of writes), kept per loop."""

import asyncio
from collections.abc import Callable
from typing import TypeVar

V = TypeVar("V")


def of_this_loop(registry: dict[asyncio.AbstractEventLoop, V], make: Callable[[], V]) -> V:
    """The running loop's entry of `registry`, made with `make` on first use (the entries of loops that have closed
    since, such as a test's, are dropped then)."""
    loop = asyncio.get_running_loop()
    found = registry.get(loop)
    if found is None:
        for stale in [other for other in registry if other.is_closed()]:
            del registry[stale]
        found = registry[loop] = make()
    return found
