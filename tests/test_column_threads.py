"""aggregators/parallel.py: column ranges run on a pool of threads kept between calls, results in
order, the first range in the calling thread, and an error raised only after every range ended."""
import multiprocessing
import threading
import time

import pytest

from krum_mpi.aggregators import parallel


def test_results_in_order_and_threads_kept_between_calls():
    ranges = [(0, 10), (10, 20), (20, 30)]
    seen = []

    def work(a, b):
        seen.append(threading.get_ident())
        time.sleep(0.01)  # the ranges overlap in time: each runs in its own thread
        return list(range(a, b))

    first = parallel.run_ranges(work, ranges)
    assert threading.get_ident() in seen and len(set(seen)) == 3  # the first range ran here
    alive = {t.ident for t in threading.enumerate()}
    seen.clear()
    second = parallel.run_ranges(work, ranges)
    assert first == second == [list(range(a, b)) for a, b in ranges]
    assert set(seen) <= alive and {t.ident for t in threading.enumerate()} == alive  # no thread started


def test_an_error_is_raised_after_every_range_ended():
    finished = []

    def work(a, b):
        if a == 0:
            raise ValueError("range 0")
        time.sleep(0.05)
        finished.append(a)
        return a

    with pytest.raises(ValueError, match="range 0"):
        parallel.run_ranges(work, [(0, 1), (1, 2), (2, 3)])
    assert sorted(finished) == [1, 2]


def test_worker_threads_do_not_split_again():
    budgets = []

    def work(a, b):
        budgets.append(getattr(parallel._state, "budget", None))
        return parallel.column_ranges(__import__("numpy"), 1 << 20)

    parallel._state.budget = 4
    try:
        inner = parallel.run_ranges(work, [(0, 1), (1, 2)])
    finally:
        parallel._state.budget = None
    assert budgets == [1, 1] and inner == [[(0, 1 << 20)], [(0, 1 << 20)]]
    assert parallel._state.budget is None


def _ranges_in_child(queue):
    queue.put(parallel.run_ranges(lambda a, b: b - a, [(0, 1), (1, 3), (3, 6)]))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_runs_ranges_on_its_own_threads():
    """The pool's threads are not copied by fork: a child that used the parent's pool would wait
    forever on work no thread takes."""
    parallel.run_ranges(lambda a, b: a, [(0, 1), (1, 2)])  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_ranges_in_child, args=(queue,))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and queue.get(timeout=5) == [1, 2, 3]
