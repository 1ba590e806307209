"""Work from one event loop run in batches: one batch on the database at a time, what arrives meanwhile next."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batches(Generic[Item, Result]):
    """`run` takes a list of items and returns their results in order (or raises for them all). An item that finds
    nothing running runs at once, alone; those that arrive while a batch runs wait and go next, together, in a task
    of their own. Each caller gets its own item's result once its batch is done; a caller that goes away takes
    nothing of the others' batch with it."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._run = run
        self.running = False
        self._waiting: list[tuple[Item, asyncio.Future]] = []

    async def submit(self, item: Item) -> Result:
        if self.running:
            answer = asyncio.get_running_loop().create_future()
            self._waiting.append((item, answer))
            return await asyncio.shield(answer)
        self.running = True
        try:
            return (await self._run([item]))[0]
        finally:
            if self._waiting:
                asyncio.ensure_future(self._run_waiting())
            else:
                self.running = False

    async def _run_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as error:  # each caller decides what a failure means for it
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(error)
                else:
                    for (_, answer), result in zip(batch, results, strict=True):
                        if not answer.done():
                            answer.set_result(result)
        finally:
            self.running = False
            for _, answer in self._waiting:  # only if this task itself was cancelled (its loop is closing)
                answer.cancel()
            self._waiting = []
