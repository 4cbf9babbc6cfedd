r"""Similarity matrices over many models: checkpoint x checkpoint heat-maps at hardware speed.

:func:`similarity_matrix` computes :math:`S_{ij} = \langle f_i, g_j\rangle /
(\lVert f_i\rVert\,\lVert g_j\rVert)` for all pairs as *batched* contractions: the models of a
block are stacked, and the model index becomes a batch index of the doubled network, so
cotengra plans one contraction per orbit whose pairwise steps are large (batched) GEMMs
(for example the Gram matrix :math:`W_a W_b^\top` of every pair of embeddings at once).

How the work is organised:

* **blocks** — models are grouped by structure, groups are cut into chunks of at most
  ``block_size`` models, and each pair of chunks is one block (one batched comparison).
  ``block_size`` defaults to the largest size whose largest intermediate stays within a
  per-device target (:data:`TARGET_BYTES`: cache-sized on a CPU, large on a GPU) and within the
  memory budget (``memory``, default :func:`tnsim.paths.memory_limit`); a square matrix is cut
  into at least two chunks so symmetry can be used;
* **symmetry** — for ``similarity_matrix(models)`` only blocks on and above the diagonal are
  computed and mirrored; with the exact method a diagonal block (a chunk against itself)
  batches its pairs :math:`i<j` in one ``diag``-mode contraction, so every unordered pair is
  computed once (the recursive method computes a diagonal block whole and keeps its upper
  triangle); the matrix is exactly symmetric;
* **shared per-model work** — norms :math:`\lVert f_i\rVert` are computed once per model (one
  batched ``diag`` contraction per chunk), not once per pair; the variant choice and the
  contraction paths are found once per structure; within a block, intermediates that recur
  across copies, orbits and term pairs are computed once
  (:func:`tnsim.execute.shared_intermediates`);
* **results file** (``results=``) — finished blocks are written as they complete
  (:mod:`tnsim.results`); a rerun with the same file skips them and recomputes only what is
  missing;
* **executor** (``executor=``) — blocks run as tasks on a ``dask.distributed.Client`` or any
  ``concurrent.futures.Executor`` (:mod:`tnsim.distributed`); results are identical to a local
  run because every block is computed by the same function from the same inputs;
* **devices** — everything is created on the models' device and stays there: no host
  round trips inside the loop over blocks (unless a results file is written, which copies each
  finished block to the host once).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import torch

from .. import _caches, baselines
from .._memory import memory_limit
from ..distributed import run_tasks
from ..errors import ArgumentTypeError, InvalidArgumentError, StructureError, UnaffordableError, ZeroNormError
from ..frontends._compile import as_network
from ..ir._network import Network, stack, unstack
from ..measures import as_measure
from ..plan._contract import DRY_SAMPLES, Scaled, dry_run, quiet
from ..plan._execute import shared_intermediates
from ..progress import bar as progress_bar
from ..results import ResultsFile, fingerprint, tensor_digest
from ._choose import cosine, cost_from_stats, resolve_method
from ._exact import exact
from ._prepare import Mode, prepare
from ._recursive import Chain, recursive, self_chain

__all__ = ["similarity_matrix", "matrix_cost", "MatrixPlan", "plan_matrix", "default_block_size"]

#: Default target for the largest intermediate of one block, per device type (bytes). On a
#: CPU, blocks whose intermediates stay in the last-level cache run several times faster per
#: flop than one big batched contraction (measured: docs/performance.md); a GPU prefers big
#: batches. The memory budget (``memory=``) caps both.
TARGET_BYTES = {"cpu": 8 * 2**20, "cuda": 256 * 2**20}
#: Fewest models per chunk the default picks (smaller batches waste GEMM efficiency).
MIN_CHUNK = 4
#: Fewest pairs batched together in a diagonal block (more when the block is larger).
PAIRS_PER_BATCH = 32
#: Seconds before the progress bar appears (short runs stay quiet).
PROGRESS_DELAY = 2.0


@dataclass(frozen=True, eq=False)
class Chunk:
    """Models ``rows`` (indices into one side's list), all of one structure, stacked."""

    index: int
    group: int
    rows: tuple[int, ...]
    stack: Network


@dataclass(frozen=True)
class Spec:
    """What every block computes (pickled to workers with each task)."""

    measure: object
    method: str
    outputs: object


@dataclass(eq=False)
class MatrixPlan:
    """How :func:`similarity_matrix` will compute a matrix (see :func:`plan_matrix`).

    Attributes
    ----------
    chunks_a, chunks_b
        The chunks of each side (``chunks_b is chunks_a`` for a square matrix).
    blocks
        Pairs ``(i, j)`` of chunk indices computed (``i <= j`` when symmetric).
    methods
        Method per pair of structure groups.
    block_size
        Largest number of models per chunk.
    """

    nets_a: list
    nets_b: list
    symmetric: bool
    chunks_a: list
    chunks_b: list
    blocks: list
    methods: dict
    measure: object
    outputs: object
    block_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.nets_a), len(self.nets_b)

    @property
    def device(self) -> torch.device:
        return self.nets_a[0].device

    def spec(self, i: int, j: int) -> Spec:
        ga, gb = self.chunks_a[i].group, self.chunks_b[j].group
        return Spec(self.measure, self.methods[(ga, gb)], self.outputs)


def _as_list(models, example_input) -> list[Network]:
    if isinstance(models, Network):
        if models.batch is None:
            raise StructureError(
                "similarity_matrix takes a list of models (or one stacked network), got a single "
                f"unstacked network {models.name}"
            )
        return [unstack(models, i) for i in range(models.batch)]
    nets = [as_network(m, example_input) for m in models]
    for n in nets:
        if n.batch is not None:
            raise StructureError(f"{n.name} is a stack; pass the models as a list instead")
    return nets


def _groups(nets: list[Network]) -> list[list[int]]:
    """Indices of the models, grouped by structure (in order of first appearance)."""
    by: dict = {}
    for i, n in enumerate(nets):
        by.setdefault(n.structure, []).append(i)
    return list(by.values())


def default_block_size(n_a: int, n_b: int, symmetric: bool, probe=None, target: float | None = None) -> int:
    """Models per chunk before the memory budget is applied.

    ``probe(size) -> bytes`` gives the largest intermediate of a ``size x size`` block; the
    size is grown while the largest intermediate stays within ``target`` (default
    :data:`TARGET_BYTES` for the device), never below :data:`MIN_CHUNK` unless a single pair
    already exceeds the target (then 1: batching buys large contractions nothing). A square matrix of
    at least 8 models is cut into at least two chunks per side so symmetry saves work.
    """
    n = max(n_a, n_b)
    cap = math.ceil(n / 2) if symmetric and n >= 8 else n
    if probe is None or target is None:
        return cap
    if probe(1) > target:
        # one pair's intermediates already exceed the target: its steps are large GEMMs, and
        # stacking would only add the wasted half of diagonal blocks (measured on the language
        # model: blocks of 1 ran 1.6x faster than blocks of 2; docs/performance.md)
        return 1
    size = min(cap, MIN_CHUNK)
    while size < cap:
        bigger = min(cap, size * 2)
        if probe(bigger) > target:
            # intermediates grow like size^2 (pair axes): interpolate once, then stop
            lo = probe(size)
            guess = int(size * math.sqrt(target / lo)) if lo > 0 else bigger
            size = max(size, min(bigger - 1, guess))
            break
        size = bigger
    return size


def _split(indices: list[int], size: int) -> list[tuple[int, ...]]:
    """Balanced consecutive chunks of at most ``size`` models."""
    parts = max(1, math.ceil(len(indices) / size))
    base, extra = divmod(len(indices), parts)
    out, start = [], 0
    for p in range(parts):
        stop = start + base + (1 if p < extra else 0)
        out.append(tuple(indices[start:stop]))
        start = stop
    return out


def _chunks(nets, groups, size) -> list[Chunk]:
    out = []
    for g, idx in enumerate(groups):
        for rows in _split(idx, size):
            out.append(Chunk(len(out), g, rows, stack([nets[i] for i in rows])))
    return out


_BYTES = _caches.memo("block bytes")


def _spec_key(spec: Spec) -> tuple:
    mk, out = spec.measure.key(), spec.outputs
    if out is None:
        ok = None
    elif isinstance(out, torch.Tensor) and out.dim() == 2:
        ok = ("projection", tuple(out.shape))
    else:
        ok = ("indices", len(out))
    return mk, ok, spec.method


def _block_bytes_cached(nets_a, rows_a, nets_b, rows_b, spec: Spec) -> float:
    """:func:`_block_bytes` of the block ``rows_a x rows_b``, remembered per structure."""
    na, nb = nets_a[rows_a[0]], nets_b[rows_b[0]]
    key = (na.structure, nb.structure, len(rows_a), len(rows_b), _spec_key(spec), na.dtype, nb.dtype)
    if key not in _BYTES:
        sa, sb = stack([nets_a[i] for i in rows_a]), stack([nets_b[i] for i in rows_b])
        _BYTES[key] = _block_bytes(sa, sb, spec)
    return _BYTES[key]


def _block_bytes(stack_a: Network, stack_b: Network, spec: Spec) -> float:
    """Largest intermediate (bytes) of one block and of its norms, planned, not run."""
    stats: dict = {}
    with dry_run(None):  # every orbit: block sizes must respect the true largest intermediate
        _block_inner(stack_a, stack_b, spec, stats=stats)
        if spec.method == "exact":
            _norm_scaled(stack_a, spec, stats=stats)
    itemsize = torch.promote_types(stack_a.dtype, stack_b.dtype).itemsize
    return stats.get("max_size", 0.0) * itemsize


def plan_matrix(
    models,
    models_b=None,
    *,
    measure="gaussian",
    method: str = "auto",
    mean=None,
    cov=None,
    outputs=None,
    centred: bool = False,
    example_input=None,
    block_size: int | None = None,
    memory: float | None = None,
) -> MatrixPlan:
    """Compile the models and decide chunks, blocks and methods; contracts nothing.

    ``block_size`` (models per chunk) is shrunk until the largest intermediate of a block fits
    in ``memory`` bytes (default: :func:`tnsim.paths.memory_limit`); if even one model per
    chunk does not fit, :class:`~tnsim.errors.UnaffordableError` says how much it needs.
    """
    meas = as_measure(measure, mean, cov, centred)
    symmetric = models_b is None
    nets_a = _as_list(models, example_input)
    nets_b = nets_a if symmetric else _as_list(models_b, example_input)
    if not nets_a or not nets_b:
        raise InvalidArgumentError("similarity_matrix needs at least one model on each side")
    groups_a = _groups(nets_a)
    groups_b = groups_a if symmetric else _groups(nets_b)
    methods = {}
    for ga, ia in enumerate(groups_a):
        for gb, ib in enumerate(groups_b):
            methods[(ga, gb)] = resolve_method(method, prepare(nets_a[ia[0]], nets_b[ib[0]], meas), outputs)
    budget = memory_limit() if memory is None else float(memory)
    if block_size is not None and block_size < 1:
        raise InvalidArgumentError(f"block_size must be a positive number of models, got {block_size}")

    def probe(size: int) -> float:
        need = 0.0
        for (ga, gb), m in methods.items():
            ra, rb = groups_a[ga][:size], groups_b[gb][:size]
            need = max(need, _block_bytes_cached(nets_a, ra, nets_b, rb, Spec(meas, m, outputs)))
        return need

    if block_size is None:
        target = TARGET_BYTES.get(nets_a[0].device.type, TARGET_BYTES["cuda"])
        target = min(target, budget) if budget is not None else target
        size = default_block_size(len(nets_a), len(nets_b), symmetric, probe, target)
    else:
        size = block_size
    # the largest intermediate grows with the chunk size: shrink until every pair of groups fits
    while True:
        need = probe(size)
        if budget is None or need <= budget:
            break
        if size == 1:
            raise UnaffordableError(
                f"one pair of models needs an intermediate of {need / 2**20:.3g} MiB, above the "
                f"memory budget of {budget / 2**20:.3g} MiB (memory=, or tnsim.set_memory_limit); "
                "raise the budget or use method='recursive'"
            )
        size = max(1, min(size - 1, int(size * math.sqrt(budget / need))))
    chunks_a = _chunks(nets_a, groups_a, size)
    chunks_b = chunks_a if symmetric else _chunks(nets_b, groups_b, size)
    blocks = [
        (i, j)
        for i in range(len(chunks_a))
        for j in range(len(chunks_b))
        if not symmetric or i <= j
    ]
    return MatrixPlan(nets_a, nets_b, symmetric, chunks_a, chunks_b, blocks, methods, meas, outputs, size)


def matrix_cost(models, models_b=None, *, samples: int | None = DRY_SAMPLES, **options):
    """:class:`~tnsim.Cost` of :func:`similarity_matrix` with the same arguments; runs nothing.

    Sums flops and contractions over the blocks that would run (and the per-model norms);
    ``largest_intermediate`` is the largest of any block.
    """
    plan = plan_matrix(models, models_b, **options)
    stats: dict = {"paths": []}
    # a block's cost depends on structure only: price one block per class (architectures,
    # chunk sizes, diagonal or not) and count it as many times as the class occurs
    priced: dict = {}
    side_b = "a" if plan.symmetric else "b"
    with dry_run(samples):  # the same calls as run_plan, planned and costed, contracting nothing
        per_model: dict = {}  # norms (exact) or chains (recursive), once per chunk
        stand_in: dict = {}
        for i, j in plan.blocks:
            method = plan.spec(i, j).method
            for side, k in (("a", i), (side_b, j)):
                if (side, k, method) not in per_model:
                    chunk = (plan.chunks_a if side == "a" else plan.chunks_b)[k]
                    key = ("norm", side, chunk.group, len(chunk.rows), method)
                    if key not in priced:  # dry results depend on structure only: one per class
                        spec = Spec(plan.measure, method, plan.outputs)
                        stand_in[key] = _norm_scaled(chunk.stack, spec, stats=_new_class(priced, key))
                    per_model[side, k, method] = stand_in[key]
                    priced[key]["count"] += 1
        for i, j in plan.blocks:
            ca, cb, spec = plan.chunks_a[i], plan.chunks_b[j], plan.spec(i, j)
            diag = plan.symmetric and i == j
            key = ("block", ca.group, cb.group, len(ca.rows), len(cb.rows), diag)
            if key in priced:
                priced[key]["count"] += 1
                continue
            na, nb = per_model["a", i, spec.method], per_model[side_b, j, spec.method]
            block_task(ca.stack, cb.stack, spec, na, nb, diag, stats=_new_class(priced, key))
            priced[key]["count"] += 1
    for sub in priced.values():
        _merge(stats, sub["stats"], sub["count"])
    dtype = torch.promote_types(plan.nets_a[0].dtype, plan.nets_b[0].dtype)
    method = "+".join(sorted(set(plan.methods.values())))
    return cost_from_stats(stats, method, plan.measure.describe(), dtype, plan.nets_a[0].device, blocks=len(plan.blocks),
                            block_size=plan.block_size)


def _new_class(priced: dict, key) -> dict:
    priced[key] = {"stats": {"paths": []}, "count": 0}
    return priced[key]["stats"]


def _merge(stats: dict, sub: dict, count: int) -> None:
    """Add ``count`` times one block's statistics (sums scale, maxima and sets do not)."""
    for k in ("flops", "contractions", "sliced", "unaffordable", "estimated"):
        if k in sub:
            stats[k] = stats.get(k, 0) + count * sub[k]
    for k in ("max_size", "unsliced_max_size", "slices"):
        if k in sub:
            stats[k] = max(stats.get(k, 0), sub[k])
    stats.setdefault("optimizers", set()).update(sub.get("optimizers", ()))
    stats["paths"] += sub.get("paths", [])


def chain_budget() -> float:
    """Bytes of recursive chains a matrix keeps (the memory limit); chunks beyond it have
    their chains recomputed by each block instead."""
    return memory_limit()


# --- the work of one block (module level: tasks pickle it by reference) --------------------


def _block_inner(stack_a: Network, stack_b: Network, spec: Spec, stats=None, chains=(None, None)):
    p = prepare(stack_a, stack_b, spec.measure)
    if spec.method == "exact":
        return exact(p, spec.outputs, stats=stats)
    return recursive(p, spec.outputs, stats=stats, chains=chains)


def _norm_scaled(stack_: Network, spec: Spec, stats=None):
    """Per-model work of a chunk: the squared norms (exact: a batched ``diag`` contraction),
    or the :class:`~tnsim.methods._recursive.Chain` (recursive: the models propagated against
    themselves, norms included)."""
    p = prepare(stack_, stack_, spec.measure)
    if spec.method == "exact":
        return exact(p, spec.outputs, mode=Mode("diag"), stats=stats)
    return self_chain(p, spec.outputs, stats=stats)


def norm_task(stack_: Network, spec: Spec):
    """Task: the per-model work of one chunk (see :func:`_norm_scaled`)."""
    with torch.no_grad(), shared_intermediates(), quiet():
        return _norm_scaled(stack_, spec)


def _take(net: Network, index: torch.Tensor) -> Network:
    """The stack of models ``index`` of a stacked network (arrays shared by several tensors
    stay shared, so their products are still computed once)."""
    memo: dict = {}

    def pick(x):
        if id(x) not in memo:
            memo[id(x)] = x[index]
        return memo[id(x)]

    def terms(ts):
        # a subset of a stack reads no more coordinates than the stack: keep its support
        return tuple(
            replace(t.with_arrays(tuple(pick(x) for x in t.arrays), batch=len(index)), support=t.support)
            for t in ts
        )

    return replace(
        net,
        terms=terms(net.terms),
        raw=terms(net.raw) if net.raw is not None else None,
        layers=tuple(_take(layer, index) for layer in net.layers) if net.layers else None,
    )


def _pick(s: Scaled, index: torch.Tensor) -> Scaled:
    def sel(x):
        return x[index] if isinstance(x, torch.Tensor) and x.dim() else x

    return Scaled(s.mantissa[index], sel(s.log_a), sel(s.log_b))


def _diagonal_exact(stack_: Network, spec: Spec, norms: Scaled, stats=None) -> torch.Tensor:
    """A chunk against itself, each unordered pair once: the pairs ``i < j`` form one batch
    (``diag`` mode: model ``i`` of one stack meets model ``i`` of the other), the diagonal
    comes from the norms."""
    n = stack_.batch
    device = norms.mantissa.device
    rows, cols = torch.triu_indices(n, n, 1, device=device)
    value = torch.empty(n, n, dtype=torch.float64, device=device)
    idx = torch.arange(n, device=device)
    value[idx, idx] = cosine(norms, norms, norms)
    per = max(n, PAIRS_PER_BATCH)  # pairs per batch: intermediates no bigger than a block's
    for start in range(0, len(rows), per):
        r, c = rows[start : start + per], cols[start : start + per]
        ab = exact(prepare(_take(stack_, r), _take(stack_, c), spec.measure), spec.outputs, mode=Mode("diag"), stats=stats)
        cos = cosine(ab, _pick(norms, r), _pick(norms, c))
        value[r, c] = cos
        value[c, r] = cos
    return value


def block_task(
    stack_a: Network, stack_b: Network, spec: Spec, norms_a=None, norms_b=None, diagonal=False, stats=None
):
    """Task: the cosines of one block, shape ``(len(rows), len(cols))``, float64.

    Exact: ``norms_a`` / ``norms_b`` are the chunks' squared norms (computed once per model);
    a ``diagonal`` block (a chunk against itself) computes each unordered pair once.
    Recursive: they are the chunks' chains (each model against itself, computed once per
    model; ``None``: computed here), so a block propagates only the cross states; a diagonal
    block is computed whole and symmetrised from its upper triangle.
    """
    with torch.no_grad(), shared_intermediates(), quiet():
        if spec.method == "exact" and diagonal:
            return _diagonal_exact(stack_a, spec, norms_a, stats)
        if spec.method == "exact":
            ab = _block_inner(stack_a, stack_b, spec, stats)
            value = cosine(ab, norms_a, norms_b)
        elif diagonal and stack_a.batch == 1 and isinstance(norms_a, Chain):
            # one model against itself: its chain's norm is the whole answer (1, or undefined)
            return cosine(norms_a.norm, norms_a.norm, norms_a.norm).reshape(1, 1)
        else:
            value = cosine(*_block_inner(stack_a, stack_b, spec, stats, (norms_a, norms_b)))
    if diagonal:
        upper = torch.triu(value)
        value = upper + torch.triu(value, 1).T
    return value


def _local(x, device):
    """Bring a task's result to the matrix's device (remote workers return host tensors)."""
    if isinstance(x, Scaled):
        return Scaled(_local(x.mantissa, device), _local(x.log_a, device), _local(x.log_b, device))
    if isinstance(x, Chain):
        return replace(x, scales=_local(x.scales, device), states=_local(x.states, device), norm=_local(x.norm, device))
    if isinstance(x, (list, tuple)):
        return type(x)(_local(v, device) for v in x)
    return x.to(device) if isinstance(x, torch.Tensor) else x


# --- the public function -------------------------------------------------------------------


def similarity_matrix(
    models,
    models_b=None,
    *,
    measure="gaussian",
    method: str = "auto",
    mean=None,
    cov=None,
    outputs=None,
    centred: bool = False,
    example_input=None,
    block_size: int | None = None,
    memory: float | None = None,
    executor=None,
    progress: bool = True,
    results=None,
    **baseline_options,
) -> torch.Tensor:
    r"""Matrix of similarities, shape ``(N, N)`` (or ``(N_a, N_b)`` with a second list).

    Parameters
    ----------
    models, models_b
        Lists of modules or networks (or one stacked :class:`~tnsim.Network` each). Without
        ``models_b`` the matrix is square and symmetric and only half of it is computed.
    measure, method, mean, cov, outputs, centred, example_input
        As in :func:`tnsim.similarity`. ``measure`` may also name a baseline metric of
        :mod:`tnsim.baselines` (extra keyword arguments go to it).
    block_size
        Models per chunk (default: see :func:`default_block_size`, shrunk to fit ``memory``).
    memory
        Budget in bytes for the largest intermediate of one block (default
        :func:`tnsim.paths.memory_limit`, 4 GiB unless set).
    executor
        A ``dask.distributed.Client`` or ``concurrent.futures.Executor`` to run blocks on.
    progress
        Show a progress bar over blocks (it appears only once a run has taken 2 s; live on a
        terminal, a line every 30 s or 10% in logs: :mod:`tnsim.progress`).
    results
        Path of a results file: finished blocks are saved as they complete and skipped when
        the same computation is run again (see :mod:`tnsim.results`).

    Returns
    -------
    torch.Tensor
        float64, on the models' device.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> ms = [tnsim.nn.Bilinear(4, 6, 3) for _ in range(3)]
    >>> M = tnsim.similarity_matrix(ms, measure="tensor")
    >>> M.shape, bool((M == M.T).all())
    (torch.Size([3, 3]), True)
    """
    if isinstance(measure, str) and measure not in ("tensor", "gaussian"):
        # pass the shared options on (a baseline that has no use for one rejects it by name)
        shared = {"outputs": outputs, "mean": mean, "cov": cov}
        options = {k: v for k, v in shared.items() if v is not None}
        if centred:
            options["centred"] = True
        if method != "auto":
            raise ArgumentTypeError(f"method={method!r} applies to 'tensor' and 'gaussian', not {measure!r}")
        return baselines.matrix(measure, models, models_b, **options, **baseline_options)
    if baseline_options:
        raise ArgumentTypeError(f"unexpected options {sorted(baseline_options)} for measure {measure!r}")
    plan = plan_matrix(
        models, models_b, measure=measure, method=method, mean=mean, cov=cov, outputs=outputs,
        centred=centred, example_input=example_input, block_size=block_size, memory=memory,
    )
    return run_plan(plan, executor=executor, progress=progress, results=results)


def _header(plan: MatrixPlan) -> dict:
    options = plan.measure.header()
    out = plan.outputs
    options["outputs"] = tensor_digest(out if out is None or isinstance(out, torch.Tensor) else list(map(int, out)))
    methods = sorted({m for m in plan.methods.values()})
    header = {
        "computation": "tnsim.similarity_matrix",
        **options,
        "method": methods,
        "symmetric": plan.symmetric,
        "a": fingerprint(plan.nets_a),
        "b": None if plan.symmetric else fingerprint(plan.nets_b),
        "dtype": str(torch.promote_types(plan.nets_a[0].dtype, plan.nets_b[0].dtype)),
    }
    return json.loads(json.dumps(header))


def run_plan(plan: MatrixPlan, *, executor=None, progress: bool = True, results=None) -> torch.Tensor:
    """Compute a planned matrix (see :func:`similarity_matrix` for the options)."""
    device = plan.device
    out = torch.full(plan.shape, float("nan"), dtype=torch.float64, device=device)
    store = None
    todo = list(plan.blocks)
    if results is not None:
        store = ResultsFile(results, _header(plan), plan.shape)
        if store.done.any():
            out.copy_(torch.from_numpy(store.values).to(device))
        todo = [
            (i, j) for i, j in todo
            if not store.finished(plan.chunks_a[i].rows, plan.chunks_b[j].rows)
        ]
    rows_a = {c.index: torch.tensor(c.rows, device=device) for c in plan.chunks_a}
    rows_b = rows_a if plan.symmetric else {c.index: torch.tensor(c.rows, device=device) for c in plan.chunks_b}

    # per-model work once, for every chunk an unfinished block needs: the squared norms
    # (exact), or each model's chain against itself (recursive: norms and running scales)
    def chunk_of(key) -> Chunk:
        return (plan.chunks_a if key[0] == "a" else plan.chunks_b)[key[1]]

    side_b = "a" if plan.symmetric else "b"
    wanted = []
    for i, j in todo:
        method = plan.spec(i, j).method
        wanted += [("a", i, method), (side_b, j, method)]
    tasks = [(key, (chunk_of(key).stack, Spec(plan.measure, key[2], plan.outputs))) for key in dict.fromkeys(wanted)]
    per_model: dict = {}
    budget, held = chain_budget(), [0]

    def got_norm(key, value):
        if isinstance(value, Chain):  # kept while they fit the budget; blocks recompute the rest
            if held[0] + value.nbytes <= budget:
                held[0] += value.nbytes
                per_model[key] = _local(value, device)
            return
        per_model[key] = value = _local(value, device)
        if store is not None and value.mantissa.dim() == 1:
            store.store_norms(key[0], chunk_of(key).rows, _norm_rows(value))

    if store is not None:  # norms saved by an earlier run are read back, not recomputed
        for key, _ in tasks:
            rows = store.stored_norms(key[0], chunk_of(key).rows) if key[2] == "exact" else None
            if rows is not None:
                per_model[key] = _norm_from_rows(rows, device)
        tasks = [t for t in tasks if t[0] not in per_model]

    run_tasks(norm_task, tasks, got_norm, executor, shared=1)

    bar = progress_bar(
        total=len(plan.blocks), initial=len(plan.blocks) - len(todo), disable=not progress,
        delay=PROGRESS_DELAY, desc="similarity blocks", unit="block",
    )

    def block_args(i, j):
        ca, cb = plan.chunks_a[i], plan.chunks_b[j]
        spec = plan.spec(i, j)
        na, nb = per_model.get(("a", i, spec.method)), per_model.get((side_b, j, spec.method))
        return (ca.stack, cb.stack, spec, na, nb, plan.symmetric and i == j)

    def got_block(key, value):
        i, j = key
        value = value.to(device)
        ra, rb = rows_a[i], rows_b[j]
        out[ra[:, None], rb[None, :]] = value
        mirror = plan.symmetric and i != j
        if mirror:
            out[rb[:, None], ra[None, :]] = value.T
        if store is not None:
            store.store(plan.chunks_a[i].rows, plan.chunks_b[j].rows, value, mirror=mirror)
        bar.update(1)

    try:
        run_tasks(block_task, (((i, j), block_args(i, j)) for i, j in todo), got_block, executor, shared=2)
    finally:
        bar.close()
    undefined = torch.isnan(out.diagonal()) if plan.symmetric else torch.isnan(out).all(1)
    if device.type != "meta" and bool(undefined.any()):  # one host synchronisation, after every block is stored
        rows = torch.nonzero(undefined).flatten().tolist()
        raise ZeroNormError(
            f"models {rows} have zero norm under the {plan.measure.describe()} measure and the "
            "compared outputs, so their similarities are undefined"
            + (f"; the finished blocks are kept in {results}" if results is not None else "")
        )
    return out


def _norm_rows(s: Scaled):
    """Per-model squared norms as ``(3, n)`` float64 host rows (mantissa, log_a, log_b)."""
    m = s.mantissa.detach().to("cpu", torch.float64)

    def per_model(x):
        return torch.as_tensor(x, dtype=torch.float64).to("cpu").expand(m.shape)

    return torch.stack([m, per_model(s.log_a), per_model(s.log_b)]).numpy()


def _norm_from_rows(rows, device) -> Scaled:
    t = torch.from_numpy(rows).to(device)
    return Scaled(t[0], t[1], t[2])
