"""The worker's micro-batcher, in-process (no model, no network)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from uplink.batcher import BatcherClosed, MicroBatcher


def doubled(items):
    return [x * 2 for x in items]


def test_concurrent_submissions_share_batches_up_to_max_batch():
    # All 8 callers announce themselves before any submits, and max_wait is long: a batch waits for the
    # announced callers and runs as soon as it holds 4 items.
    batcher = MicroBatcher(doubled, max_batch=4, max_wait=60)
    announced = threading.Barrier(8)

    def call(x):
        with batcher.expecting():
            announced.wait(30)
            future = batcher.submit(x)
        return future.result(30)

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        assert [r.value for r in results] == [x * 2 for x in range(8)]
        assert {r.batch_size for r in results} == {4}
        stats = batcher.stats()
        assert (stats["batches"], stats["items"], stats["largest"], stats["sizes"]) == (2, 8, 4, {"4": 2})
    finally:
        batcher.close()


def test_a_lone_item_runs_at_once_without_waiting_for_company():
    # max_wait is an hour: the item would sit that long if the batcher waited for a batch to fill.
    batcher = MicroBatcher(doubled, max_batch=32, max_wait=3600)
    try:
        with batcher.expecting():
            future = batcher.submit(21)
        result = future.result(30)
        assert (result.value, result.batch_size) == (42, 1)
        plain = batcher.submit(4).result(30)  # not announced at all
        assert (plain.value, plain.batch_size) == (8, 1)
        assert batcher.stats()["sizes"] == {"1": 2}
    finally:
        batcher.close()


def test_a_batch_waits_for_callers_still_preparing_their_items():
    batcher = MicroBatcher(doubled, max_batch=8, max_wait=3600)
    try:
        with batcher.expecting(), batcher.expecting():  # two calls decoding their images
            first = batcher.submit(1)
            second = batcher.submit(2)  # the batcher holds the first for the second caller
        # both callers done: nobody else is on the way, so the batch of two runs now
        assert [(f.result(30).value, f.result(30).batch_size) for f in (first, second)] == [(2, 2), (4, 2)]
    finally:
        batcher.close()


def test_submit_many_keeps_order_and_splits_at_max_batch():
    batcher = MicroBatcher(doubled, max_batch=3, max_wait=60)
    try:
        futures = batcher.submit_many(list(range(6)))
        assert [f.result(30).value for f in futures] == [0, 2, 4, 6, 8, 10]
        assert batcher.stats()["sizes"] == {"3": 2}
    finally:
        batcher.close()


def test_a_failing_batch_fails_its_callers_only():
    calls = []

    def process(items):
        calls.append(list(items))
        if "bad" in items:
            raise RuntimeError("model crashed")
        return items

    batcher = MicroBatcher(process, max_batch=2, max_wait=60)
    try:
        failing = batcher.submit_many(["bad", "x"])
        for future in failing:
            with pytest.raises(RuntimeError, match="model crashed"):
                future.result(30)
        ok = batcher.submit_many(["y", "z"])
        assert [f.result(30).value for f in ok] == ["y", "z"]
    finally:
        batcher.close()


def test_stop_waiting_runs_queued_items_at_once_and_close_refuses_new_ones():
    batcher = MicroBatcher(doubled, max_batch=8, max_wait=3600)
    with batcher.expecting():  # a second caller that never submits
        future = batcher.submit(5)
        batcher.stop_waiting()  # otherwise this item would wait an hour for the second caller
        assert future.result(30).value == 10
    batcher.close(timeout=30)
    with pytest.raises(BatcherClosed):
        batcher.submit(1)


def test_close_runs_what_is_queued():
    release = threading.Event()

    def slow(items):
        release.wait(30)
        return items

    batcher = MicroBatcher(slow, max_batch=1, max_wait=0)
    first, second = batcher.submit_many(["a", "b"])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    release.set()
    closer.join(30)
    assert (first.result(1).value, second.result(1).value) == ("a", "b")
