"""tnsim.cost: what a comparison costs, without contracting; memory limit, slicing, path cache."""

import math
import re

import pytest
import torch

import tnsim
from tnsim.plan import _contract as contract
from tnsim.plan import _execute as execute
from tnsim.plan import _paths as paths
from models import bilinear, stack2


def refuse(*args, **kwargs):
    raise AssertionError("cost() ran a contraction")


def forbid_contractions(monkeypatch):
    for module, name in ((contract, "execute"), (execute, "execute"), (execute, "_pairwise")):
        monkeypatch.setattr(module, name, refuse)


@pytest.fixture
def no_contractions(monkeypatch):
    """Any tensor contraction fails the test."""
    forbid_contractions(monkeypatch)


@pytest.fixture
def limit():
    yield paths.set_memory_limit
    paths.set_memory_limit(None)


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
@pytest.mark.parametrize("method", ["exact", "recursive"])
def test_cost_runs_no_contraction_and_matches_the_real_run(measure, method, monkeypatch):
    a, b = stack2(bias=True, seed=1), stack2(bias=True, seed=2)
    real = tnsim.compare(a, b, measure=measure, method=method).cost
    with monkeypatch.context() as m:
        forbid_contractions(m)
        c = tnsim.cost(a, b, measure=measure, method=method, samples=None)  # plan every orbit
    assert c.contractions == real.contractions > 0
    assert c.flops == pytest.approx(real.flops) and c.flops > 0
    assert c.largest_intermediate == real.largest_intermediate
    assert c.largest_intermediate_bytes == 8 * c.largest_intermediate  # float64 models
    assert c.width == pytest.approx(math.log2(c.largest_intermediate))
    assert len(c.paths) == c.contractions and all(isinstance(p, tuple) for p in c.paths)
    assert "cotengra" in c.optimizer and str(paths.cache_dir()) in c.optimizer
    assert c.fits and c.sliced == 0 and c.method == method


def test_cost_counts_orbit_contractions_without_running_them(no_contractions):
    a, b = stack2(seed=1), stack2(seed=2)
    c = tnsim.cost(a, b, measure="gaussian", method="exact")
    assert c.contractions == 30  # 10 Wick orbits for <a,b>, <a,a>, <b,b> (test_api counts them)


def test_executed_flops_equal_planned_flops_minus_shared_work(monkeypatch):
    a, b = stack2(seed=1), stack2(seed=2)
    planned = tnsim.cost(a, b, measure="gaussian", method="exact", samples=None).flops
    with execute.count_flops() as n:
        tnsim.similarity(a, b, measure="gaussian", method="exact")
    assert 0 < n["flops"] < planned  # layer-1 products recur across the copies of layer 2
    monkeypatch.setattr(execute, "SHARING", False)
    with execute.count_flops() as n:
        tnsim.similarity(a, b, measure="gaussian", method="exact")
    assert n["flops"] == pytest.approx(planned)


def test_matrix_cost_is_what_the_matrix_runs(monkeypatch):
    models = [stack2(seed=s) for s in range(5)]
    kw = dict(measure="gaussian", method="exact", block_size=2)
    c = tnsim.cost(models, samples=None, **kw)
    monkeypatch.setattr(execute, "SHARING", False)
    with execute.count_flops() as n:
        tnsim.similarity_matrix(models, progress=False, **kw)
    assert n["flops"] == pytest.approx(c.flops)


def test_matrix_cost(no_contractions):
    models = [bilinear(seed=s) for s in range(5)]
    c = tnsim.cost(models, measure="tensor", method="exact", block_size=2)
    assert c.blocks == 6 and c.block_size == 2
    single = tnsim.cost(models, measure="tensor", method="exact", block_size=5)
    assert single.blocks == 1 and single.largest_intermediate > c.largest_intermediate
    with pytest.raises(TypeError, match="list"):
        tnsim.cost(models[0])


def test_memory_limit_error_names_the_size(limit):
    a, b = stack2(seed=1), stack2(seed=2)
    c = tnsim.cost(a, b, measure="tensor", method="exact", samples=None)  # the true largest
    need = c.largest_intermediate_bytes
    limit(need / 1000, slice_overhead=None)  # below any path, careful or quick
    with pytest.raises(tnsim.UnaffordableError) as err:
        tnsim.similarity(a, b, measure="tensor", method="exact")
    msg = str(err.value)
    named = re.search(r"intermediate of ([0-9.e+-]+) MiB \(([0-9.e+-]+) elements\)", msg)
    mib, elements = float(named.group(1)), float(named.group(2))  # the contraction refused
    assert need / 1000 < mib * 2**20 <= need * 1.01 and elements * 8 == pytest.approx(mib * 2**20, rel=1e-2)
    assert "memory limit" in msg and isinstance(err.value, ValueError)
    assert "slicing is off" in msg and "None" + "x" not in msg
    refused = tnsim.cost(a, b, measure="tensor", method="exact", samples=None)
    assert not refused.fits and "fits=False" in repr(refused)


def test_slicing_fits_the_limit_and_gives_the_same_value(limit):
    models = [stack2(seed=s) for s in range(4)]
    st = tnsim.stack([tnsim.compile(m) for m in models])
    ref = tnsim.inner(st, st, measure="gaussian", method="exact")
    full = tnsim.cost(st, st, measure="gaussian", method="exact")
    limit(full.largest_intermediate_bytes / 3, slice_overhead=4.0)
    c = tnsim.cost(st, st, measure="gaussian", method="exact")
    assert c.fits and c.sliced > 0
    assert c.largest_intermediate_bytes <= full.largest_intermediate_bytes / 3
    assert c.unsliced_largest_intermediate == full.largest_intermediate
    got = tnsim.inner(st, st, measure="gaussian", method="exact")
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


def test_paths_persist_on_disk_and_a_warm_start_skips_the_search(tmp_path, monkeypatch):
    monkeypatch.setenv("TNSIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(paths, "QUICK_FLOPS", 0)  # every path searched (quick ones stay in memory)
    tnsim.clear_cache(disk=False)
    a, b = bilinear(seed=1), bilinear(seed=2)
    cold = tnsim.similarity(a, b, measure="tensor", method="exact")
    assert tnsim.cache_dir() == tmp_path / "paths"
    files = sorted(tnsim.cache_dir().glob("*.json"))
    assert files
    tnsim.clear_cache(disk=False)  # a new process: nothing in memory, paths on disk

    def no_search(*args):
        raise AssertionError("searched a path that is cached on disk")

    monkeypatch.setattr(paths, "_search", no_search)
    assert tnsim.similarity(a, b, measure="tensor", method="exact") == cold
    tnsim.clear_cache()
    assert not tnsim.cache_dir().exists()
    monkeypatch.undo()
    tnsim.clear_cache(disk=False)


def test_dense_states_over_the_limit_are_refused_before_allocation(limit):
    """The recursive method keeps a dense (n d) x (n d) state between sequence layers: over the
    memory limit it is refused by cost() and by a run, naming the shape, instead of exhausting
    memory. The input metric itself is never dense (positions and features are joined)."""
    from tnsim.ir._term import Term

    def layer(seed, o):
        g = torch.Generator().manual_seed(seed)
        arrays = (torch.randn(o, 5, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64),
                  torch.randn(5, 8, generator=g, dtype=torch.float64), torch.ones(32, dtype=torch.float64))
        term = Term((("o", "h"), ("h", "i"), ("h", "j"), ("t",)), arrays, (("t", "i"), ("t", "j")), ("t", "o"))
        return tnsim.Network((term,), (32, 8), (32, o))

    one_a, one_b = layer(1, 3), layer(2, 3)
    a, b = tnsim.compose(layer(1, 3), layer(3, 8)), tnsim.compose(layer(2, 3), layer(4, 8))
    limit(1e5)
    assert tnsim.cost(one_a, one_b, method="recursive").fits  # a (32, 3, 32, 3) output state
    for run in (tnsim.cost, tnsim.similarity):
        with pytest.raises(tnsim.UnaffordableError, match=r"\(32, 8, 32, 8\).*MiB"):
            run(a, b, method="recursive")
    assert tnsim.cost(a, b, method="exact").fits  # the exact method joins the positions instead


def test_cost_counts_every_orbit_and_estimates_flops_from_a_sample():
    """cost() plans a sample per term pair: the contraction count is exact, the flops close."""
    import models as M

    a, b = M.stack2(bias=True, seed=1), M.stack2(bias=True, seed=2)
    est = tnsim.cost(a, b, measure="gaussian", method="exact")
    ran = tnsim.compare(a, b, measure="gaussian", method="exact").cost
    assert est.contractions == ran.contractions
    assert est.estimated and not ran.estimated
    # 8 orbits per term pair stand for all; orbits' (greedy) path costs vary up to 50x here
    assert 1 / 3 < est.flops / ran.flops < 3.0
    assert est.largest_intermediate <= ran.largest_intermediate
    every = tnsim.cost(a, b, measure="gaussian", method="exact", samples=None)
    assert every.flops == ran.flops  # planning every orbit prices exactly what runs


def test_disk_cache_is_bounded_and_keeps_recently_used_paths(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setenv("TNSIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TNSIM_CACHE_ENTRIES", "3")
    monkeypatch.setattr(paths, "QUICK_FLOPS", 0)  # every path searched and stored
    tnsim.clear_cache(disk=False)

    def chain(n):  # a distinct structure per n: a chain of n matrices
        inputs = [(f"i{k}", f"i{k + 1}") for k in range(n)]
        return inputs, ("i0", f"i{n}"), {f"i{k}": 2 + k for k in range(n + 1)}

    def entries():
        return {p.name for p in paths.cache_dir().glob("*.json")}

    names = []
    for n in range(2, 6):
        before = entries()
        paths.find_tree(*chain(n))
        names.append((entries() - before or {None}).pop())
        time.sleep(0.01)  # distinct modification times
    assert len(entries()) == 3 and names[0] not in entries()  # the oldest entry went first
    # reading an entry (in a fresh process: nothing in memory) makes it recent again
    old = paths.cache_dir() / names[1]
    os.utime(old, (1, 1))
    tnsim.clear_cache(disk=False)
    paths.find_tree(*chain(3))
    assert os.stat(old).st_mtime > 1
    paths.find_tree(*chain(7))
    assert len(entries()) == 3 and names[1] in entries() and names[2] not in entries()
    tnsim.clear_cache(disk=False)


def test_cost_counts_orbits_of_many_copies_without_enumerating_permutations(monkeypatch):
    """A term pair of more copies than DRY_ENUMERATE_LIMIT allows permutations of is priced
    from Burnside's count even when its orbits are few (listing would enumerate k! rows); the
    count equals the listed one here (tensor measure, unpadded: no zero rules)."""
    a, b = stack2(seed=1), stack2(seed=2)
    listed = tnsim.cost(a, b, measure="tensor", method="exact")
    monkeypatch.setattr(contract, "DRY_ENUMERATE_LIMIT", 1)  # even 2! is too many
    tnsim.clear_cache(disk=False)

    def never(*args):
        raise AssertionError("orbits were listed")

    monkeypatch.setattr(contract, "live_pairings", never)
    counted = tnsim.cost(a, b, measure="tensor", method="exact")
    assert counted.contractions == listed.contractions
    assert counted.estimated and counted.flops > 0


def test_cost_counts_orbits_beyond_the_list_limit_without_listing_them(monkeypatch):
    """Past DRY_LIST_LIMIT orbits a term pair is priced from Burnside's count (no orbit is
    listed); without the zero rules (tensor measure, unpadded) the count equals the listed one,
    and the flops are those of the aligned pairing times the count: a lower bound."""
    a, b = stack2(seed=1), stack2(seed=2)
    listed = tnsim.cost(a, b, measure="tensor", method="exact")
    ran = tnsim.compare(a, b, measure="tensor", method="exact").cost
    monkeypatch.setattr(contract, "DRY_LIST_LIMIT", 1)
    tnsim.clear_cache(disk=False)

    def never(*args):
        raise AssertionError("orbits were listed")

    monkeypatch.setattr(contract, "live_pairings", never)
    counted = tnsim.cost(a, b, measure="tensor", method="exact")
    assert counted.contractions == listed.contractions == ran.contractions
    assert counted.estimated and 0 < counted.flops <= ran.flops
