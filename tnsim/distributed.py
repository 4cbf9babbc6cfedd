"""Farm independent tasks out to an executor: a ``dask.distributed.Client`` or any
``concurrent.futures.Executor``.

:func:`tnsim.similarity_matrix` splits a matrix into blocks (see :mod:`tnsim.matrix`); with
``executor=`` each block is one task. The function and its arguments must pickle (tnsim
networks and measures do), the results come back to the caller, which assembles the matrix,
writes the results file and updates the progress bar. Every block is computed by the same
function with the same inputs as in a local run, so the matrix is the same.

Pointing it at a real cluster::

    from dask.distributed import Client
    client = Client("tcp://scheduler-host:8786")   # started with `dask scheduler` and
                                                   # `dask worker tcp://scheduler-host:8786`
    M = tnsim.similarity_matrix(checkpoints, executor=client, results="run.npz")

Workers need the same tnsim and torch versions as the client (``client.upload_file`` or a
shared environment). With a Dask client the per-block inputs (stacked checkpoints of one row
or column of blocks) are sent to the cluster once, as small tasks that return them, and shared
by the tasks that need them.

A Dask run survives the loss of workers: the inputs are tasks the scheduler can run again (not
scattered data, which dies with the worker holding it), so Dask recomputes what a dead worker
held, and a task that still fails because a worker died (cancelled, ``KilledWorker``) is
submitted again, up to :data:`RETRIES` times. Results reach the caller as they finish, so with
a results file every finished block is kept whatever happens to the cluster.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Iterable

__all__ = ["run_tasks", "is_dask_client", "RETRIES"]

#: How often one task is submitted again after losing its worker.
RETRIES = 3


def is_dask_client(executor) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed" and hasattr(executor, "scatter")


def run_tasks(
    fn: Callable,
    tasks: Iterable[tuple],
    on_result: Callable,
    executor=None,
    *,
    shared: int = 0,
    max_pending: int | None = None,
) -> None:
    """Run ``fn(*args)`` for each ``(key, args)`` in ``tasks``; call ``on_result(key, value)``.

    ``on_result`` always runs in the calling thread, in completion order. The first ``shared``
    arguments of each task are large inputs reused across tasks: a Dask client sends each
    distinct one (by identity) once. At most ``max_pending`` tasks are in flight (default:
    four per worker thread, at least 8). A Dask task lost with its worker is resubmitted (at
    most :data:`RETRIES` times); any other exception in a task cancels what is pending and is
    re-raised.
    """
    if executor is None:
        for key, args in tasks:
            on_result(key, fn(*args))
        return
    dask = is_dask_client(executor)
    lost: tuple = ()
    if dask:
        from distributed import KilledWorker, wait

        submit = _dask_submitter(executor, fn, shared)
        n = sum(executor.nthreads().values()) if hasattr(executor, "nthreads") else 2
        lost = (KilledWorker, cf.CancelledError)
    elif isinstance(executor, cf.Executor):
        wait = cf.wait
        submit = lambda args: executor.submit(fn, *args)
        n = getattr(executor, "_max_workers", 2) or 2
    else:
        raise TypeError(
            f"executor must be a dask.distributed.Client or a concurrent.futures.Executor, "
            f"got {type(executor).__name__}"
        )
    limit = max_pending or max(8, 4 * n)
    pending: dict = {}
    retries: dict = {}
    it = iter(tasks)

    def fill():
        for key, args in it:
            pending[submit(args)] = (key, args)
            if len(pending) >= limit:
                return

    def outcome(fut, key, args):
        """``(True, value)``, or ``(False, None)`` when the task was resubmitted."""
        try:
            return True, fut.result()
        except lost:
            if retries.get(key, 0) >= RETRIES:
                raise
            retries[key] = retries.get(key, 0) + 1
            pending[submit(args)] = (key, args)
            return False, None

    fill()
    try:
        while pending:
            done, _ = wait(list(pending), return_when="FIRST_COMPLETED")
            for fut in done:
                key, args = pending.pop(fut)
                ok, value = outcome(fut, key, args)
                if ok:
                    on_result(key, value)
            fill()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


def _identity(x):
    """Task: return its input (the input then lives on the cluster, recomputable)."""
    return x


def _dask_submitter(client, fn, shared: int):
    inputs: dict = {}  # id(x) -> (future of x, x); x kept alive so that its id stays unique

    def data(x):
        entry = inputs.get(id(x))
        if entry is None or entry[0].status in ("lost", "cancelled", "error"):
            entry = inputs[id(x)] = (client.submit(_identity, x, pure=False), x)
        return entry[0]

    def submit(args):
        args = list(args)
        for i in range(shared):
            args[i] = data(args[i])
        return client.submit(fn, *args, pure=False)

    return submit
