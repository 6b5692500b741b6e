"""Preparing the next iterations' batches in a worker thread while the networks train.

A batch (patch sampling, the shared spatial transform, and the strong view of network A) is a
pure function of the iteration number, so it can be computed ahead without changing what a run
sees: a prefetched run, a run without prefetching and a resumed run draw the same patches.
One thread is enough: the heavy parts (MONAI/NumPy crops, torch intensity ops) release the
GIL, and the network's own thread pool keeps the cores busy in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Calls ``prepare(i)`` for the next ``depth`` iterations ahead of their use.

    Args:
        prepare: the pure function of the iteration that builds its batch.
        start: first iteration that will be asked for.
        stop: one past the last iteration (nothing is prepared beyond it).
        depth: how many iterations to keep in flight; 0 prepares in the caller's thread.

    ``get(i)`` must be called with ``start, start + 1, ...`` in order. ``wait_s`` accumulates
    the seconds ``get`` spent waiting for (or, at depth 0, computing) a batch: the share of
    the run the data path held the networks up.
    """

    def __init__(self, prepare: Callable[[int], T], start: int, stop: int, depth: int = 2) -> None:
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self._prepare = prepare
        self._next = start
        self._stop = stop
        self._depth = depth
        self._pending: dict[int, Future[T]] = {}
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="dkuxnet-data") if depth else None
        )
        self.wait_s = 0.0
        self._fill(start)

    def _fill(self, current: int) -> None:
        if self._pool is None:
            return
        while self._next < min(current + self._depth + 1, self._stop):
            self._pending[self._next] = self._pool.submit(self._prepare, self._next)
            self._next += 1

    def get(self, iteration: int) -> T:
        """The batch of ``iteration`` (re-raises what ``prepare`` raised)."""
        started = time.perf_counter()
        if self._pool is None:
            value = self._prepare(iteration)
        else:
            if iteration not in self._pending:
                raise ValueError(f"iteration {iteration} was not scheduled (out of order?)")
            value = self._pending.pop(iteration).result()
            self._fill(iteration + 1)
        self.wait_s += time.perf_counter() - started
        return value

    def close(self) -> None:
        """Drop what is still queued and stop the worker (waits for the batch in progress)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
