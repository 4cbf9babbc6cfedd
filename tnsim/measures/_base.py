r"""What every measure shares: input spaces, kernel pieces, and the two protocols.

A **measure** says what an inner product of two models means. It owns everything that
differs between input distributions, behind :class:`Measure`:

* :meth:`Measure.kernel` — the tensors put between input copies (a :class:`Kernel`);
* :attr:`Kernel.scheme` — which pairings or partitions of the copies are summed over
  (``"bijections"``, ``"matchings"`` or ``"partitions"``; :mod:`tnsim.doubled` enumerates
  their orbits);
* :meth:`Kernel.reaches` and :meth:`Kernel.zero_size` — its zero rules (which copies a block
  can join, which block sizes vanish);
* :meth:`Measure.key` / :meth:`Measure.header` — its cache key and results-file identity;
* :attr:`Measure.closure` — the state the recursive method propagates (``"hierarchical"``,
  ``"gaussian"``, or ``None``: exact for one layer, refused beyond).

A kernel's :class:`Piece` objects name, per axis, the *slot* of a copy in a block (``0`` for
the first copy, ``1`` for the second, ...) and the axis of that copy's space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeMismatchError

__all__ = [
    "Space", "Piece", "Kernel", "Measure", "selector", "embedded", "e0", "feature_pieces",
    "diagonal_pieces", "real_weights", "pad_pieces", "KERNEL_FLAGS",
]


@dataclass(frozen=True)
class Space:
    """Shape of one input copy (``(d,)`` or ``(n, d)``, padding included) and its padding."""

    shape: tuple[int, ...]
    padded: bool

    @property
    def d(self) -> int:
        return self.shape[-1] - int(self.padded)

    @property
    def sequence(self) -> bool:
        return len(self.shape) == 2


@dataclass(frozen=True, eq=False)
class Piece:
    r"""A kernel tensor attached to the legs of the copies of one block.

    ``legs`` names, for each non-batch axis of ``array``, the copy's slot in the block and the
    axis of that copy's space. ``batch`` names the leading batch axes (``'a'`` and/or ``'b'``:
    one per side whose model stack the tensor depends on). ``identity`` declares an unbatched
    identity matrix between one leg each of two different slots: the doubled network then
    joins the two legs into one index instead of contracting it (several such pieces in one
    block make a hyperedge :math:`\delta_{i_1\dots i_r}`).
    """

    array: torch.Tensor
    legs: tuple[tuple[int, int], ...]
    batch: tuple[str, ...] = ()
    identity: bool = False

    @property
    def structure(self) -> tuple:
        return (self.legs, self.batch, tuple(self.array.shape[len(self.batch) :]), self.identity)

    @property
    def joins(self) -> bool:
        """An identity between legs of two different slots (contracted by renaming)."""
        return self.identity and not self.batch and len(self.legs) == 2 and self.legs[0][0] != self.legs[1][0]


class Kernel:
    """The tensors one measure puts between the input copies of two frames (sides ``a``, ``b``).

    Subclasses set ``spaces`` (``{"a": Space, "b": Space}``), ``structure`` (hashable: what
    a contraction plan depends on), ``scheme`` and its flags, and implement :meth:`block`
    and :meth:`pad`.

    Attributes
    ----------
    scheme
        ``"bijections"`` (every copy of *a* with one of *b*, normalised by :math:`1/K!`),
        ``"matchings"`` (Wick pairs and, if ``partial``, singletons) or ``"partitions"``
        (set partitions of all copies, blocks of any size up to ``max_block``).
    partial
        Matchings may leave copies unpaired (a non-zero mean or a padded frame).
    max_block
        Largest block of a partition with a non-zero kernel (``None``: no bound).
    decoupled
        The kernel never joins the constant coordinate of a padded copy with a real one.
    const_blocks
        Blocks of two or more copies may join constant coordinates (the tensor metric).
    real_mean_zero
        A singleton block sees only the constant coordinate (zero mean of the real ones).
    """

    scheme = "matchings"
    partial = False
    max_block: int | None = 2
    decoupled = False
    const_blocks = False
    real_mean_zero = False
    spaces: dict
    structure: tuple

    def block(self, sides: tuple[str, ...]) -> tuple[Piece, ...] | None:
        """Pieces joining one block of copies from the given sides (``None``: exactly zero)."""
        if len(sides) == 1:
            return self.single(sides[0])
        if len(sides) == 2:
            return self.pair(*sides)
        return None

    def pair(self, s1: str, s2: str) -> tuple[Piece, ...]:
        raise NotImplementedError

    def single(self, s: str) -> tuple[Piece, ...]:
        raise NotImplementedError

    def pad(self, s: str) -> tuple[Piece, ...]:
        """Pieces on a virtual (homogenising) copy of side ``s``: the constant coordinate."""
        return pad_pieces(self.spaces[s], self.like)

    def reaches(self, block_support: list[tuple[bool, bool]]) -> bool:
        """Whether a block can be non-zero, given per copy (uses constant, uses real features).

        Only consulted when ``decoupled``: singletons need the constant if the real mean is
        zero; larger blocks need every copy real, or (``const_blocks``) every copy constant.
        """
        if len(block_support) == 1:
            return block_support[0][0] or not self.real_mean_zero
        if all(r for _, r in block_support):
            return True
        return self.const_blocks and all(c for c, _ in block_support)

    def zero_size(self, r: int) -> bool:
        """Whether every block of ``r`` copies is exactly zero (e.g. a vanishing cumulant).

        Consulted by the zero rules for any kernel; the default says no block size vanishes.
        """
        return False

    def linear_parts(self) -> tuple["Kernel", ...]:
        """Kernels summing to this one, each cheaper to contract; a pairing with a single copy
        pair (a linear layer) may be summed over them. The default is the kernel itself."""
        return (self,)

    def seen_from(self, side: str) -> "Kernel":
        """This kernel as a one-sided kernel of ``side`` (single-model expectations)."""
        return _OneSided(self, side)


#: The :class:`Kernel` attributes a wrapping kernel inherits from the kernel it wraps.
KERNEL_FLAGS = ("scheme", "partial", "max_block", "decoupled", "const_blocks", "real_mean_zero", "like")


class _OneSided(Kernel):
    """A kernel seen from one side: every slot reads that side's frame."""

    def __init__(self, kernel: Kernel, side: str):
        self.k, self.side = kernel, side
        for name in KERNEL_FLAGS:
            setattr(self, name, getattr(kernel, name, None))
        self.spaces = {"a": kernel.spaces[side], "b": kernel.spaces[side]}
        self.structure = ("one-sided", side) + tuple(kernel.structure)

    def block(self, sides):
        return self.k.block((self.side,) * len(sides))

    def pad(self, s):
        return self.k.pad(self.side)

    def zero_size(self, r):
        return self.k.zero_size(r)


class Measure:
    """Base of every measure: what an inner product of two models means.

    Subclasses implement :meth:`kernel`, :meth:`describe`, :meth:`key` and set ``name``,
    ``closure``, ``homogenise`` and ``centred``.

    Attributes
    ----------
    name
        Short name (``"tensor"``, ``"gaussian"``, ...).
    centred
        Compare :math:`f - \\mathbb E f` (the output covariance) instead of :math:`f`.
    homogenise
        Pad lower-degree terms to the top degree with virtual copies on the constant
        coordinate (the tensor measure's canonical padded tensor).
    closure
        The recursive method's per-layer state: ``"hierarchical"`` (tensor metric),
        ``"gaussian"`` (means and covariances, Gaussian closure), or ``None``.
    """

    name = "measure"
    centred = False
    homogenise = False
    closure: str | None = None

    def kernel(self, space_a: Space, space_b: Space, like: torch.Tensor) -> Kernel:
        raise NotImplementedError

    def check(self, space: Space) -> None:
        """Raise a :class:`~tnsim.errors.ShapeMismatchError` if the models' inputs do not fit."""

    def tensors(self) -> tuple:
        """Tensors the kernel is built from (their version counters invalidate caches)."""
        return ()

    def key(self) -> tuple:
        """Hashable identity of the measure's options (not of its tensors' values)."""
        return (self.name, self.centred)

    def header(self) -> dict:
        """What a results file records to recognise the same measure."""
        return {"measure": self.describe()}

    def describe(self) -> str:
        return self.name


# --- helpers ---------------------------------------------------------------------------------


def selector(space: Space, like: torch.Tensor) -> torch.Tensor:
    """``S`` of shape ``(d, dim)`` picking the real features out of a (padded) copy."""
    s = torch.zeros(space.d, space.shape[-1], dtype=like.dtype, device=like.device)
    s[:, int(space.padded) :] = torch.eye(space.d, dtype=like.dtype, device=like.device)
    return s


def embedded(matrix: torch.Tensor, sa: Space, sb: Space) -> torch.Tensor:
    r""":math:`S_a^\top M S_b` for a ``(d, d)`` feature matrix, without forming the products.

    The selectors only prepend a zero row / column for a padded frame, so this is a copy of
    ``matrix`` into the real block (``(d+1)^2`` work instead of ``d^3``).
    """
    pa, pb = int(sa.padded), int(sb.padded)
    out = matrix.new_zeros(sa.d + pa, sb.d + pb)
    out[pa:, pb:] = matrix
    return out


def e0(space: Space, like: torch.Tensor) -> torch.Tensor:
    v = torch.zeros(space.shape[-1], dtype=like.dtype, device=like.device)
    v[0] = 1
    return v


def feature_pieces(matrix: torch.Tensor, sa: Space, sb: Space, like, identity: bool = False) -> tuple[Piece, ...]:
    """Pieces for a feature matrix between two copies, times the identity on positions.

    ``identity`` declares that ``matrix`` is the identity (the doubled network then joins the
    two legs directly instead of contracting an identity matrix).
    """
    if not sa.sequence:
        return (Piece(matrix, ((0, 0), (1, 0)), identity=identity),)
    n = sa.shape[0]
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return (
        Piece(eye, ((0, 0), (1, 0)), identity=True),
        Piece(matrix, ((0, 1), (1, 1)), identity=identity),
    )


def diagonal_pieces(weights: torch.Tensor | None, sa: Space, sb: Space, like) -> tuple[Piece, ...]:
    r"""Pieces for the diagonal feature metric :math:`\mathrm{diag}(w)` between two copies of
    equal width (times the identity on positions for sequences).

    The feature legs are joined (one index, no :math:`d\times d` matrix) and ``weights``
    (``None``: all ones) sits on the joined index as a vector, so a padded frame's
    :math:`\mathrm{diag}(0, 1, \dots, 1)` costs :math:`d` numbers instead of :math:`(d+1)^2`.
    """
    f = 1 if sa.sequence else 0
    pieces = (Piece(torch.eye(sa.shape[-1], dtype=like.dtype, device=like.device), ((0, f), (1, f)), identity=True),)
    if weights is not None:
        pieces += (Piece(weights, ((0, f),)),)
    if sa.sequence:
        eye = torch.eye(sa.shape[0], dtype=like.dtype, device=like.device)
        pieces = (Piece(eye, ((0, 0), (1, 0)), identity=True),) + pieces
    return pieces


def real_weights(space: Space, like: torch.Tensor) -> torch.Tensor:
    """``(0, 1, ..., 1)`` for a padded frame: the real features' diagonal."""
    w = torch.ones(space.shape[-1], dtype=like.dtype, device=like.device)
    w[0] = 0
    return w


def pad_pieces(space: Space, like: torch.Tensor) -> tuple[Piece, ...]:
    """The constant coordinate of a padded copy (averaged over positions for sequences)."""
    if not space.padded:
        raise ShapeMismatchError("homogenising a term needs a padded input space")
    if not space.sequence:
        return (Piece(e0(space, like), ((0, 0),)),)
    n = space.shape[0]
    ones = torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    return (Piece(ones, ((0, 0),)), Piece(e0(space, like), ((0, 1),)))
