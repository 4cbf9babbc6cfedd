"""Contraction paths: cotengra search, cached in memory and on disk.

Paths depend only on the doubled network's structure (indices and sizes), never on weight
values, so they are searched once and reused for every checkpoint.

* Optimizer: a greedy path when it costs at most :data:`QUICK_FLOPS` flops (a search would
  take longer than the contraction); otherwise cotengra's dynamic programming (``'optimal'``) for networks of at most
  :data:`OPTIMAL_CUTOFF` tensors; above that a tiered search that spends effort in proportion
  to the contraction's cost: random-greedy (32 trials), then subtree reconfiguration above
  :data:`REFINE_FLOPS`, then a hyper-optimisation (greedy + label propagation, 16 trials)
  above :data:`HYPER_FLOPS`. All with ``parallel=False`` (process pools cost more than they
  save on small machines).
* Isomorphic networks share a path (:mod:`tnsim.plan._classes`): a network whose tensors
  and indices match one searched before reuses its path (checked to cost the same), so the
  orbits of a comparison cost one search per shape class, not one per orbit.
* Disk cache: one JSON file per structure under :func:`cache_dir` (default
  ``~/.cache/tnsim/paths``, or ``$TNSIM_CACHE_DIR/paths``); delete the folder, or call
  :func:`clear_cache`, to clear it. A warm start skips the search entirely. The cache keeps at
  most :func:`cache_limit` entries (default :data:`CACHE_ENTRIES`, or
  ``$TNSIM_CACHE_ENTRIES``): past it, the least recently used entries are deleted.
* Memory limit: :func:`set_memory_limit` (bytes, default ``$TNSIM_MEMORY_LIMIT`` or 4 GiB);
  a contraction whose largest intermediate would exceed it is sliced (cotengra) if that costs
  at most :data:`SLICE_OVERHEAD` times its flops, otherwise it raises
  :class:`~tnsim.errors.UnaffordableError` before running. :func:`tnsim.cost` reports both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cotengra as ctg

from .. import _caches
from .._memory import SLICE_OVERHEAD, check_allocation, memory_limit, set_memory_limit, slice_overhead
from ._classes import remember, structure_class, transferred

__all__ = [
    "find_tree",
    "check_allocation",
    "SLICE_OVERHEAD",
    "cache_dir",
    "clear_cache",
    "set_memory_limit",
    "memory_limit",
    "slice_overhead",
    "slice_tree",
    "optimizer_name",
    "cache_limit",
]

OPTIMAL_CUTOFF = 12
#: Default largest number of entries in the disk cache (a few KiB each on disk).
CACHE_ENTRIES = 2000
_MEMORY = _caches.memo("contraction trees")
_WRITES = [0]  # disk entries written by this process since the cache was last pruned


def cache_dir() -> Path:
    """Folder of the on-disk path cache."""
    root = os.environ.get("TNSIM_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "tnsim"
    return base / "paths"


def cache_limit() -> int:
    """Largest number of entries kept in the disk cache: ``$TNSIM_CACHE_ENTRIES``, else
    :data:`CACHE_ENTRIES`."""
    env = os.environ.get("TNSIM_CACHE_ENTRIES")
    return max(1, int(env)) if env else CACHE_ENTRIES


def _prune(folder: Path, limit: int) -> None:
    """Delete the least recently used entries of ``folder`` beyond ``limit`` (entries are
    touched when read, so their modification time is their last use)."""
    try:
        entries = [(e.stat().st_mtime, e.path) for e in os.scandir(folder) if e.name.endswith(".json")]
    except OSError:
        return
    if len(entries) <= limit:
        return
    entries.sort()
    for _, path in entries[: len(entries) - limit]:
        try:
            os.unlink(path)
        except OSError:
            pass  # another process removed it first


def _wrote_entry(folder: Path) -> None:
    """Count a new disk entry and prune once the count reaches a tenth of the limit."""
    limit = cache_limit()
    _WRITES[0] += 1
    if _WRITES[0] >= max(1, limit // 10):
        _WRITES[0] = 0
        _prune(folder, limit)


def clear_cache(disk: bool = True) -> None:
    """Forget cached contraction paths and plans: in memory, and on disk unless ``disk=False``.

    The next comparison searches its paths again (a cold start). Deleting the folder
    :func:`cache_dir` by hand has the same effect on disk.
    """
    _caches.clear()
    if disk:
        shutil.rmtree(cache_dir(), ignore_errors=True)


def slice_tree(tree: ctg.ContractionTree, max_elements: float) -> ctg.ContractionTree | None:
    """A sliced copy of ``tree`` whose intermediates have at most ``max_elements`` entries
    and whose flops are at most :func:`slice_overhead` times the original's, or ``None``."""
    overhead = slice_overhead()
    if overhead is None or max_elements < 1:
        return None
    try:
        sliced = tree.slice(target_size=max_elements, target_overhead=overhead, seed=0)
    except Exception:  # cotengra could not reach the target
        return None
    if sliced.max_size() > max_elements or sliced.total_flops() > overhead * tree.total_flops():
        return None
    return sliced


def optimizer_name(n_tensors: int) -> str:
    """How the path of a network with ``n_tensors`` tensors is searched (a greedy path of at
    most :data:`QUICK_FLOPS` flops is kept as it is)."""
    if n_tensors <= OPTIMAL_CUTOFF:
        return "cotengra optimal (exhaustive dynamic programming)"
    return (
        "cotengra random-greedy (32 trials), subtree reconfiguration above "
        f"{REFINE_FLOPS:.0e} flops, greedy/labels hyper-search above {HYPER_FLOPS:.0e} flops"
    )


def _key(inputs, output, size_dict) -> str:
    canon = json.dumps(
        [[list(map(str, i)) for i in inputs], list(map(str, output)), sorted(
            (str(k), int(v)) for k, v in size_dict.items()
        )]
    )
    return hashlib.sha1(canon.encode()).hexdigest()


#: a greedy path of at most this many flops is taken as it is: such a contraction runs in
#: about a millisecond or less, so a search (about ten milliseconds for twenty tensors) could
#: save less than it costs unless the path were reused many times (measured on the
#: two-score-pair attention layer's 977 orbits, average 1.3e6 flops: cold 15.7 s -> 2.4 s,
#: flops 1 % higher)
QUICK_FLOPS = 3e6
#: search harder when the quick path costs more than this many flops ...
REFINE_FLOPS = 1e6
#: ... and harder still (hyper-optimisation) above this
HYPER_FLOPS = 1e8


def _quick(inputs, output, size_dict):
    """The greedy path, if it is cheap enough to keep as it is (else ``None``)."""
    quick = ctg.array_contract_tree(inputs, output, size_dict, optimize="greedy")
    return quick if quick.total_flops() <= QUICK_FLOPS else None


def _search(inputs, output, size_dict):
    """Tiered search: spend search time in proportion to what the contraction will cost.

    Doubled networks are numerous and mostly cheap, but pairings that mix subtrees have large
    treewidth, where a quick random-greedy path can be 50x worse than a careful one (measured
    on depth-3 networks: 1.4e9 vs 2.6e7 flops).
    """
    if len(inputs) <= OPTIMAL_CUTOFF:
        return ctg.array_contract_tree(inputs, output, size_dict, optimize="optimal")
    opt = ctg.RandomGreedyOptimizer(max_repeats=32, parallel=False, seed=0)
    tree = ctg.array_contract_tree(inputs, output, size_dict, optimize=opt)
    if tree.total_flops() > REFINE_FLOPS:
        tree = min(tree, tree.subtree_reconfigure(subtree_size=8), key=_score)
    if tree.total_flops() > HYPER_FLOPS:
        hyper = ctg.HyperOptimizer(
            methods=["greedy", "labels"], max_repeats=16, minimize="flops",
            parallel=False, progbar=False, reconf_opts=None,
        )
        better = ctg.array_contract_tree(inputs, output, size_dict, optimize=hyper)
        better = min(better, better.subtree_reconfigure(subtree_size=8), key=_score)
        tree = min(tree, better, key=_score)
    return tree


def _score(tree) -> float:
    return float(tree.total_flops())


def _canonical(inputs, output, size_dict):
    """Rename indices to single symbols in order of appearance (cotengra's canonical form)."""
    names: dict = {}
    for term in list(inputs) + [output]:
        for i in term:
            if i not in names:
                names[i] = ctg.get_symbol(len(names))
    return (
        [tuple(names[i] for i in term) for term in inputs],
        tuple(names[i] for i in output),
        {names[i]: int(size_dict[i]) for i in names},
    )


def careful_tree(inputs, output, size_dict) -> ctg.ContractionTree:
    """A freshly searched tree without the quick greedy shortcut (and not cached): for a
    contraction whose quick path cannot be sliced under the memory limit."""
    return _search(*_canonical(inputs, output, size_dict))


def _read_cached(key: str, inputs, output, size_dict) -> ctg.ContractionTree | None:
    """The tree of the disk cache's entry ``key`` (canonical names), or ``None``."""
    path_file = cache_dir() / f"{key}.json"
    if not path_file.exists():
        return None
    try:
        path = [tuple(p) for p in json.loads(path_file.read_text())["path"]]
        tree = ctg.ContractionTree.from_path(inputs, output, size_dict, path=path)
        os.utime(path_file)  # recently used: kept when the cache is pruned
    except Exception:  # corrupt cache entry (or pruned meanwhile): search again
        return None
    return tree


def known_or_greedy_tree(inputs, output, size_dict) -> ctg.ContractionTree:
    """The cached tree of this network if one is known (memory or disk), else a greedy path
    that is not cached: what a cost estimate plans with (a greedy path's flops bound the
    searched one's from above)."""
    inputs, output, size_dict = _canonical(inputs, output, size_dict)
    key = _key(inputs, output, size_dict)
    tree = _MEMORY.get(key) or _read_cached(key, inputs, output, size_dict)
    return tree or ctg.array_contract_tree(inputs, output, size_dict, optimize="greedy")


def find_tree(inputs, output, size_dict) -> ctg.ContractionTree:
    """A contraction tree for the network, from memory, disk, or a fresh search.

    In that order: memory, the disk cache, the greedy path if it costs at most
    :data:`QUICK_FLOPS` (kept in memory only: it is cheaper to find again than to store), the
    path of an isomorphic network searched before (:mod:`tnsim.plan._classes`), a search
    (stored on disk). The tree is built on canonical index names; contract it with arrays in
    input order.
    """
    inputs, output, size_dict = _canonical(inputs, output, size_dict)
    key = _key(inputs, output, size_dict)
    tree = _MEMORY.get(key)
    if tree is not None:
        return tree
    path_file = cache_dir() / f"{key}.json"
    tree = _read_cached(key, inputs, output, size_dict)
    if tree is None:
        tree = _quick(inputs, output, size_dict)
    if tree is None:
        shape_key, graph = structure_class(inputs, output, size_dict)
        tree = transferred(shape_key, graph, inputs, output, size_dict)  # an isomorphic one's
        if tree is None:
            tree = _search(inputs, output, size_dict)
            remember(shape_key, graph, tree)
        try:
            path_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = path_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"path": [list(map(int, p)) for p in tree.get_path()]}))
            tmp.replace(path_file)
            _wrote_entry(path_file.parent)
        except OSError:
            pass  # a read-only cache is not an error
    _MEMORY[key] = tree
    return tree
