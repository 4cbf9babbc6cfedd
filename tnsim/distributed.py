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
or column of blocks) are scattered to the cluster once and shared by the tasks that need
them.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Iterable

__all__ = ["run_tasks", "is_dask_client"]


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
    arguments of each task are large inputs reused across tasks: a Dask client scatters each
    distinct one (by identity) once. At most ``max_pending`` tasks are in flight (default:
    four per worker thread, at least 8). An exception in a task cancels what is pending and is
    re-raised.
    """
    if executor is None:
        for key, args in tasks:
            on_result(key, fn(*args))
        return
    dask = is_dask_client(executor)
    if dask:
        from distributed import wait

        submit = _dask_submitter(executor, fn, shared)
        n = sum(executor.nthreads().values()) if hasattr(executor, "nthreads") else 2
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
    it = iter(tasks)

    def fill():
        for key, args in it:
            pending[submit(args)] = key
            if len(pending) >= limit:
                return

    fill()
    try:
        while pending:
            done, _ = wait(list(pending), return_when="FIRST_COMPLETED")
            for fut in done:
                key = pending.pop(fut)
                on_result(key, fut.result())
            fill()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


def _dask_submitter(client, fn, shared: int):
    scattered: dict = {}

    def submit(args):
        args = list(args)
        for i in range(shared):
            x = args[i]
            if id(x) not in scattered:
                scattered[id(x)] = (client.scatter(x, hash=False), x)
            args[i] = scattered[id(x)][0]
        return client.submit(fn, *args, pure=False)

    return submit
