"""Requests that arrive together run through the model together.

A model forward pass on 32 images costs less than 32 passes on one image (the weights are read
once, the matmuls are larger and keep every core busy), so the server queues each decoded image
and one task takes whatever is waiting: up to `max_batch` images, waiting at most `max_wait_s`
after the first for more. It waits only while other images are still being decoded: with
nothing on its way, waiting would only add latency (a lone client would pay it on every request).
The model runs in one worker thread, off the event loop, which keeps accepting and decoding
requests meanwhile; those pile up and make the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`await submit(item)` returns `run_batch([..., item, ...])`'s answer for that item."""

    def __init__(self, run_batch: Callable[[list[Item]], list[Result]], max_batch: int, max_wait_s: float):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.batches = self.images = 0  # served so far, for /health and the tests
        self.incoming = 0  # items still being prepared (decoded) by their submitters
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._worker: ThreadPoolExecutor | None = None

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue else 0

    def start(self) -> None:
        """Call from the event loop that will submit (the server's lifespan)."""
        self._queue = asyncio.Queue()
        # a new thread starts with OpenMP's default team size, not torch.set_num_threads' choice
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="vitkit-model", initializer=torch.set_num_threads,
                                          initargs=(torch.get_num_threads(),))
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._worker:
            self._worker.shutdown(wait=True)

    async def submit(self, item: Item | Awaitable[Item]) -> Result:
        """The answer for `item`; an awaitable (a decode in progress) counts as on its way until it
        gives the item, so a batch with room waits for it (at most `max_wait_s`)."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        if inspect.isawaitable(item):
            self.incoming += 1
            try:
                item = await item
            finally:
                self.incoming -= 1  # no await between this and the put: the batcher sees one or the other
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        """The first waiting item, then what else is waiting or arrives within the wait, up to the size."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not self.incoming:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:  # not yet the builtin TimeoutError on Python 3.10
                break
        return [(item, future) for item, future in batch if not future.done()]  # drop callers gone

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._worker, self.run_batch, [item for item, _ in batch])
            except Exception as e:  # a failed batch fails its requests, not the server
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
