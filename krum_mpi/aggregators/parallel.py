"""CPU threads for the rules: one BLAS thread per worker thread, our threads over column ranges.

Why: a multi-threaded BLAS synchronises its threads in every call. The rules make many small
products (one per column chunk), and on a busy machine each of those barriers can wait for a
scheduler time slice: a (1, 16) x (16, 32768) product measured 8-16 ms with two BLAS threads
against 0.06 ms with one. So inside a rule BLAS runs single-threaded and the work is split once
into column ranges, one per thread (NumPy releases the GIL in its loops and in BLAS).
The thread budget is what BLAS was allowed outside (training limits it per MPI rank), or THREADS.
On GPU (CuPy) there is one range: the device is already parallel.
"""
import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from krum_mpi.backend import thread_count

THREADS = None  # None: as many threads as BLAS may use outside the rules, else this many
_state = threading.local()
_controller = None


def blas_controller():
    """A cached threadpoolctl controller (creating one costs ~1 ms), or None without threadpoolctl."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except Exception:  # threadpoolctl missing or failing: leave BLAS alone
            _controller = False
    return _controller or None


def blas_threads():
    controller = blas_controller()
    if controller is not None:
        counts = [lib.num_threads for lib in controller.select(user_api="blas").lib_controllers]
        if counts:
            return max(1, min(counts))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def cpu_budget(fn):
    """Decorator for the public entry points: run fn with single-threaded BLAS and remember the
    thread budget for column_ranges (nested calls keep the outermost budget)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_state, "budget", None) is not None:
            return fn(*args, **kwargs)
        _state.budget = int(THREADS or blas_threads())
        controller = blas_controller()
        limit = controller.limit(limits=1, user_api="blas") if controller else contextlib.nullcontext()
        try:
            with limit:
                return fn(*args, **kwargs)
        finally:
            _state.budget = None

    return wrapper


def column_ranges(xp, d, align=1):
    """Contiguous (start, stop) column ranges covering [0, d), one per thread of the budget, starts
    aligned to ``align``. One range on GPU, or when d is too small to split."""
    threads = thread_count(xp, getattr(_state, "budget", None) or int(THREADS or 1))
    if threads == 1 or d < 2 * align:
        return [(0, d)]
    cuts = sorted({min(d, (d * k // threads) // align * align) for k in range(threads)} | {d})
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


_pool = None
_pool_lock = threading.Lock()


def shared_pool(workers):
    """One executor for the whole process with at least ``workers`` threads, kept between calls:
    starting threads in every call cost about 1 ms per call on a busy machine (each start waits
    for the new thread to be scheduled), as much as a whole small refinement."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            old, _pool = _pool, ThreadPoolExecutor(workers, thread_name_prefix="krum-mpi-ranges")
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _forget_pool():
    """In a forked child: the parent's pool threads do not exist there, so start afresh."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_ranges(fn, ranges):
    """fn(start, stop) for each range, the first in the calling thread and the others in the shared
    pool's threads when there are several; results in order."""
    if len(ranges) <= 1:
        return [fn(*r) for r in ranges]
    budget = getattr(_state, "budget", None)

    def in_thread(a, b):
        _state.budget = 1  # no nested splitting inside a worker thread
        return fn(a, b)

    futures = [shared_pool(len(ranges) - 1).submit(in_thread, a, b) for a, b in ranges[1:]]
    try:
        first = in_thread(*ranges[0])
    finally:
        _state.budget = budget
        rest = [future.result() for future in futures]  # never leave work running behind an error
    return [first, *rest]
