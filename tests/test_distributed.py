"""Blocks farmed out to executors give the local matrix: thread pools and a loopback Dask cluster."""

import concurrent.futures as cf
import os
import pickle
import signal
from types import SimpleNamespace

import numpy as np

import pytest
import torch

import tnsim
from tnsim.methods import _matrix as matrix
from models import stack2

KW = dict(measure="gaussian", method="exact", block_size=2, progress=False)


@pytest.fixture(scope="module")
def models():
    return [stack2(seed=s) for s in range(5)]


@pytest.fixture(scope="module")
def local(models):
    return tnsim.similarity_matrix(models, **KW)


def test_thread_pool_gives_the_local_matrix(models, local):
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        M = tnsim.similarity_matrix(models, executor=pool, **KW)
        R = tnsim.similarity_matrix(models[:3], models[3:], executor=pool, **KW)
    assert torch.equal(M, local)
    assert torch.equal(R, tnsim.similarity_matrix(models[:3], models[3:], **KW))


def test_block_tasks_pickle_and_give_the_same_block(models):
    """What a remote worker receives (networks, measure, norms) survives pickling."""
    plan = matrix.plan_matrix(models, **{k: v for k, v in KW.items() if k != "progress"})
    spec = plan.spec(0, 1)
    ca, cb = plan.chunks_a[0], plan.chunks_a[1]
    na, nb = matrix.norm_task(ca.stack, spec), matrix.norm_task(cb.stack, spec)
    args = (ca.stack, cb.stack, spec, na, nb, False)
    shipped = pickle.loads(pickle.dumps(args))
    assert shipped[0].structure == ca.stack.structure
    assert torch.equal(matrix.block_task(*shipped), matrix.block_task(*args))


def test_task_errors_reach_the_caller(models, monkeypatch):
    def broken(*args):
        raise RuntimeError("worker failed")

    monkeypatch.setattr(matrix, "block_task", broken)
    with cf.ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(RuntimeError, match="worker failed"):
        tnsim.similarity_matrix(models, executor=pool, **KW)
    with pytest.raises(TypeError, match="executor"):
        tnsim.similarity_matrix(models, executor=object(), **KW)


def test_local_dask_cluster_gives_the_local_matrix(models, local, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
        protocol="tcp", host="127.0.0.1", silence_logs=50,  # real (loopback) TCP comms: tasks are serialised
    ) as cluster, distributed.Client(cluster) as client:
        M = tnsim.similarity_matrix(models, executor=client, **KW)
        assert torch.equal(M, local)
        # with a results file: a resumed distributed run completes the same matrix
        path = tmp_path / "dask.npz"
        tnsim.similarity_matrix(models[:4], executor=client, results=path, **KW)
        M4 = tnsim.similarity_matrix(models[:4], executor=client, results=path, **KW)
    assert torch.equal(M4, tnsim.similarity_matrix(models[:4], **KW))


def test_dask_run_survives_a_killed_worker(models, tmp_path, monkeypatch):
    """Two process workers, one SIGKILLed as soon as the first block is stored: the lost data
    and blocks are recomputed, the finished blocks stay in the results file, and the matrix is
    the local one bit for bit."""
    distributed = pytest.importorskip("distributed")
    from tnsim.results import ResultsFile

    kw = {**KW, "block_size": 1}  # 15 blocks: the kill lands mid-run
    local = tnsim.similarity_matrix(models, **kw)
    path = tmp_path / "killed.npz"
    stored = []
    original = ResultsFile.store
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1", silence_logs=50,
    ) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)

        def store_then_kill(self, *args, **kwargs):
            original(self, *args, **kwargs)
            stored.append(int(self.done.sum()))
            if len(stored) == 1:  # the worker holding the most data (inputs, finished blocks)
                held = {w: 0 for w in pids}
                for workers in client.who_has().values():
                    for w in workers:
                        held[w] += 1
                os.kill(pids[max(held, key=held.get)], signal.SIGKILL)

        monkeypatch.setattr(ResultsFile, "store", store_then_kill)
        M = tnsim.similarity_matrix(models, executor=client, results=path, **kw)
    assert torch.equal(M, local)
    assert len(stored) == 15 and stored == sorted(stored)  # every block stored once, none dropped
    with np.load(path) as z:
        assert z["done"].all() and np.array_equal(z["values"], local.numpy())


CALLS: dict = {}


def lost_once(key, x):
    """A task whose first run is lost with its worker (as Dask reports it), then succeeds."""
    from distributed import KilledWorker

    CALLS[key] = CALLS.get(key, 0) + 1
    if key == "always" or CALLS[key] == 1:
        raise KilledWorker(key, SimpleNamespace(address="tcp://dead-worker"), 3)
    return x.sum() + key


def test_tasks_lost_with_their_worker_are_resubmitted_a_few_times():
    distributed = pytest.importorskip("distributed")
    from tnsim import distributed as D

    CALLS.clear()
    shared = torch.arange(4.0)
    got = {}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None, silence_logs=50) as cluster, \
            distributed.Client(cluster) as client:
        D.run_tasks(lost_once, [(k, (k, shared)) for k in (1, 2, 3)], got.__setitem__, client, shared=0)
        assert got == {k: shared.sum() + k for k in (1, 2, 3)} and all(CALLS[k] == 2 for k in (1, 2, 3))
        with pytest.raises(distributed.KilledWorker):
            D.run_tasks(lost_once, [("always", ("always", shared))], got.__setitem__, client)
    assert CALLS["always"] == 1 + D.RETRIES
