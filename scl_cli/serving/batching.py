"""Request limits, API errors, and the micro-batcher that groups concurrent requests of one kind
into one model call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass
class ServeLimits:
    """What one request may ask for, and how requests are batched."""

    max_upload_bytes: int = 16 * 2**20
    max_texts: int = 64  # per /embed/text request
    max_text_chars: int = 2000
    max_top_k: int = 100
    max_rerank: int = 64
    max_batch: int = 32  # requests of one kind per model call
    batch_wait_s: float = 0.005
    max_pending: int = 1024  # queued items per kind before 503


class ApiError(Exception):
    """A request the service refuses: HTTP `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- batching
class MicroBatcher:
    """Collects items submitted by concurrent requests and runs `run(items) -> results` on them in
    batches of at most `max_batch`, in `executor` (the one model thread)."""

    def __init__(self, name: str, run: Callable[[list[Any]], list[Any]], executor: ThreadPoolExecutor,
                 limits: ServeLimits) -> None:  # fmt: skip
        self.name, self.run, self.executor, self.limits = name, run, executor, limits
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = self.items = 0

    async def submit(self, item: Any) -> Any:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._work())
        if self.queue.qsize() >= self.limits.max_pending:
            raise ApiError(503, f"busy: {self.queue.qsize()} {self.name} requests queued — retry shortly")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.batch_wait_s
            while len(batch) < self.limits.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            live = [(item, future) for item, future in batch if not future.done()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in live])
            except Exception as err:  # noqa: BLE001 - one failed batch fails its requests, not the server
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches, self.items = self.batches + 1, self.items + len(live)
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
