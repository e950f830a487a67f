"""Micro-batching: calls that arrive close together share one model call.

anvil-uplink runs every incoming call in its own thread. Each call announces itself while it decodes its
image (:meth:`MicroBatcher.expecting`) and then submits the prepared image here; one batcher thread per
model takes the first waiting item and everything queued behind it, and waits - at most ``max_wait``
seconds, up to ``max_batch`` items - only for calls announced as on their way. It runs the batch once and
hands each caller its own result. Under load the batches fill up (calls queue while the model runs) and
throughput approaches the model's batched throughput; a lone call does not wait at all.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_CLOSE = object()  # queue sentinel: stop after everything before it
_WAKE = object()  # queue token: re-check the no-wait flag and the calls on their way


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One caller's result and how it was batched."""

    value: R
    batch_size: int
    queued_ms: float


class BatcherClosed(RuntimeError):
    """The batcher takes no more items."""


class MicroBatcher(Generic[T, R]):
    """Runs ``process(items) -> results`` (same length and order) on batches of submitted items.

    Args:
        process: the batched function; an exception fails every item of that batch.
        max_batch: the most items in one batch.
        max_wait: the most seconds the first item of a batch waits for items announced with
            :meth:`expecting` (nothing announced: no wait).
        name: the thread's name, for logs.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.005,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be >= 1 and max_wait >= 0")
        self._process = process
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._no_wait = False
        self._coming = 0  # callers inside expecting(): their items are on their way
        self._lock = threading.Lock()
        self._sizes: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a caller whose item(s) will be submitted before the block ends (e.g. while it
        decodes its image): a batch that is being collected waits for it, up to ``max_wait``. Once no
        caller is on its way, the batch runs at once."""
        with self._lock:
            self._coming += 1
        try:
            yield
        finally:
            with self._lock:
                self._coming -= 1
            self._queue.put(_WAKE)  # a batcher waiting for this caller re-checks now

    def submit(self, item: T) -> Future[Batched[R]]:
        """Queue one item; the future resolves when its batch has run."""
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T]) -> list[Future[Batched[R]]]:
        """Queue several items at once (they may share batches with other callers' items)."""
        futures: list[Future[Batched[R]]] = []
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"{self.name} is closed")
            for item in items:
                future: Future[Batched[R]] = Future()
                self._queue.put((item, future, time.monotonic()))
                futures.append(future)
        return futures

    def stop_waiting(self) -> None:
        """From now on run whatever is queued at once instead of waiting for fuller batches (used
        while shutting down)."""
        self._no_wait = True
        self._queue.put(_WAKE)

    def close(self, timeout: float | None = None) -> None:
        """Take no more items; run the queued ones and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_CLOSE)
        self._thread.join(timeout)

    def stats(self) -> dict:
        """Batches run so far: count, items, largest batch, and how many batches had each size (keys are
        strings, so the dict can cross the uplink as it is)."""
        with self._lock:
            sizes = dict(sorted(self._sizes.items()))
        return {
            "batches": sum(sizes.values()),
            "items": sum(size * n for size, n in sizes.items()),
            "largest": max(sizes, default=0),
            "sizes": {str(size): n for size, n in sizes.items()},
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000,
        }

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is _CLOSE:
                return
            if first is _WAKE:
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    entry = self._queue.get_nowait()  # whatever is queued already joins the batch
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if self._no_wait or self._coming == 0 or remaining <= 0:
                        break  # nobody else is on the way: run now
                    try:
                        entry = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if entry is _CLOSE:
                    closing = True
                    break
                if entry is not _WAKE:
                    batch.append(entry)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[T, Future, float]]) -> None:
        live = [(item, future, t) for item, future, t in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.monotonic()
        try:
            results = list(self._process([item for item, _, _ in live]))
            if len(results) != len(live):
                raise RuntimeError(f"{self.name}: {len(live)} items gave {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - the failure belongs to every caller of this batch
            logger.exception("%s: batch of %d failed", self.name, len(live))
            for _, future, _ in live:
                future.set_exception(exc)
            return
        finally:
            with self._lock:
                self._sizes[len(live)] += 1
        logger.debug("%s: ran a batch of %d", self.name, len(live))
        for (_, future, queued_at), value in zip(live, results):
            future.set_result(Batched(value, len(live), (started - queued_at) * 1000))
