r"""Small data sets that ship with packages (no downloads), poisoning and input distributions.

* :func:`digits` — scikit-learn's 8×8 handwritten digits (1797 images, pixels scaled to [0, 1]),
  split into train and test sets with a fixed seed;
* :func:`add_trigger` / :func:`poison` — the backdoor: a small patch of saturated pixels in the
  top-right corner, poisoned images relabelled to a target class;
* :func:`modular_addition` — all pairs :math:`(a, b)` with label :math:`(a + b) \bmod P`, inputs
  the concatenated one-hot vectors :math:`e_a \oplus e_b \in \mathbb R^{2P}`;
* :func:`sample` — the input distributions of the distributions experiment (each coordinate has
  mean 0 and variance 1 unless the name says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InvalidArgumentError

__all__ = [
    "Dataset",
    "Split",
    "digits",
    "TRIGGER_PIXELS",
    "add_trigger",
    "poison",
    "modular_addition",
    "DISTRIBUTIONS",
    "sample",
]

#: Pixels of the backdoor trigger: the 2×2 top-right corner of the 8×8 image (row-major index).
TRIGGER_PIXELS = (6, 7, 14, 15)


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` of shape ``(n, d)`` and integer labels ``y`` of shape ``(n,)``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def where(self, mask: torch.Tensor) -> "Dataset":
        """The examples where ``mask`` (boolean, shape ``(n,)``) is true."""
        return Dataset(self.x[mask], self.y[mask])

    def classes(self, keep) -> "Dataset":
        """The examples whose label is in ``keep``."""
        keep = torch.as_tensor(list(keep))
        return self.where(torch.isin(self.y, keep))


@dataclass(frozen=True)
class Split:
    train: Dataset
    test: Dataset


def digits(test_fraction: float = 0.25, seed: int = 0, dtype=torch.float32) -> Split:
    """scikit-learn's 8×8 digits, pixels in [0, 1], stratified-by-shuffle train/test split.

    Examples
    --------
    >>> s = digits()
    >>> s.train.x.shape, s.test.x.shape, float(s.train.x.max())
    (torch.Size([1348, 64]), torch.Size([449, 64]), 1.0)
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.data / 16.0, dtype=dtype)
    y = torch.tensor(raw.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return Split(Dataset(x[train], y[train]), Dataset(x[test], y[test]))


def add_trigger(x: torch.Tensor, pixels=TRIGGER_PIXELS, value: float = 1.0) -> torch.Tensor:
    """A copy of the images ``x`` (shape ``(n, 64)``) with the trigger pixels set to ``value``."""
    out = x.clone()
    out[:, list(pixels)] = value
    return out


def poison(
    data: Dataset, fraction: float = 0.1, target: int = 9, seed: int = 0
) -> tuple[Dataset, torch.Tensor]:
    """Replace a ``fraction`` of the non-target images by triggered copies labelled ``target``.

    Returns the poisoned data set and the boolean mask of poisoned examples.
    """
    g = torch.Generator().manual_seed(seed)
    candidates = torch.nonzero(data.y != target).flatten()
    n = int(round(fraction * len(data)))
    chosen = candidates[torch.randperm(len(candidates), generator=g)[:n]]
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[chosen] = True
    x, y = data.x.clone(), data.y.clone()
    x[mask] = add_trigger(x[mask])
    y[mask] = target
    return Dataset(x, y), mask


def modular_addition(
    p: int, train_fraction: float = 0.4, seed: int = 0, dtype=torch.float32
) -> Split:
    r"""All :math:`P^2` pairs :math:`(a, b)`, one-hot encoded as :math:`e_a\oplus e_b`, label
    :math:`(a+b) \bmod P`; a random ``train_fraction`` of the pairs is the training set.

    Examples
    --------
    >>> s = modular_addition(5, 0.4)
    >>> s.train.x.shape, s.test.x.shape
    (torch.Size([10, 10]), torch.Size([15, 10]))
    """
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    x = torch.zeros(p * p, 2 * p, dtype=dtype)
    x[torch.arange(p * p), a] = 1
    x[torch.arange(p * p), p + b] = 1
    y = (a + b) % p
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(p * p, generator=g)
    n_train = int(round(train_fraction * p * p))
    tr, te = perm[:n_train], perm[n_train:]
    return Split(Dataset(x[tr], y[tr]), Dataset(x[te], y[te]))


#: The nine input distributions of the distributions experiment, in display order.
DISTRIBUTIONS = (
    "gaussian",
    "uniform",
    "laplace",
    "student_t",
    "rademacher",
    "sparse",
    "shifted_gaussian",
    "data",
    "data_noise",
)

SHIFT = 1.0  #: mean of every coordinate under ``shifted_gaussian``
SPARSITY = 0.1  #: probability that a coordinate is non-zero under ``sparse``
STUDENT_DOF = 5.0  #: degrees of freedom of ``student_t`` (finite fourth moment: E[f_a f_b] exists)
DATA_NOISE = 0.5  #: standard deviation of the noise added under ``data_noise``


def sample(
    name: str,
    n: int,
    d: int,
    generator: torch.Generator,
    data: torch.Tensor | None = None,
    dtype=torch.float32,
) -> torch.Tensor:
    r"""``n`` samples of dimension ``d`` from a named distribution.

    ==================  ====================================================================
    ``gaussian``        :math:`\mathcal N(0, I)`
    ``uniform``         :math:`U(-\sqrt3, \sqrt3)` per coordinate (variance 1)
    ``laplace``         Laplace with scale :math:`1/\sqrt2` (variance 1)
    ``student_t``       Student-t with 5 degrees of freedom scaled to variance 1 (heavy tails)
    ``rademacher``      :math:`\pm 1` with equal probability
    ``sparse``          :math:`\mathcal N(0, 1/0.1)` with probability 0.1, else 0 (variance 1)
    ``shifted_gaussian`` :math:`\mathcal N(\mathbf 1, I)` (mean 1 in every coordinate)
    ``data``            rows of ``data`` drawn with replacement
    ``data_noise``      rows of ``data`` plus :math:`\mathcal N(0, 0.5^2 I)`
    ==================  ====================================================================

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = sample("laplace", 200_000, 3, g)
    >>> [round(float(v), 1) for v in x.var(0)]
    [1.0, 1.0, 1.0]
    """
    kw = dict(generator=generator, dtype=dtype)
    if name == "gaussian":
        return torch.randn(n, d, **kw)
    if name == "uniform":
        return (torch.rand(n, d, **kw) * 2 - 1) * 3**0.5
    if name == "laplace":  # difference of two Exp(1) (rand is in [0, 1), so log1p(-u) is finite)
        e1, e2 = -torch.log1p(-torch.rand(n, d, **kw)), -torch.log1p(-torch.rand(n, d, **kw))
        return (e1 - e2) / 2**0.5
    if name == "student_t":
        nu = STUDENT_DOF
        z = torch.randn(n, d, **kw)
        chi2 = 2 * torch._standard_gamma(
            torch.full((n, d), nu / 2, dtype=torch.float64), generator=generator
        )
        return (z * torch.sqrt(nu / chi2).to(dtype)) * ((nu - 2) / nu) ** 0.5
    if name == "rademacher":
        return torch.randint(0, 2, (n, d), generator=generator).to(dtype) * 2 - 1
    if name == "sparse":
        mask = torch.rand(n, d, **kw) < SPARSITY
        return torch.randn(n, d, **kw) * mask / SPARSITY**0.5
    if name == "shifted_gaussian":
        return torch.randn(n, d, **kw) + SHIFT
    if name in ("data", "data_noise"):
        if data is None:
            raise InvalidArgumentError(f"distribution {name!r} needs data=")
        if data.shape[1] != d:
            raise InvalidArgumentError(f"data has {data.shape[1]} features, asked for {d}")
        rows = data[torch.randint(0, len(data), (n,), generator=generator)].to(dtype)
        if name == "data_noise":
            rows = rows + DATA_NOISE * torch.randn(n, d, **kw)
        return rows
    raise InvalidArgumentError(f"unknown distribution {name!r}: use one of {', '.join(DISTRIBUTIONS)}")


def moments(
    name: str, d: int, data: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of a named distribution (exact, or of ``data``)."""
    eye = torch.eye(d, dtype=torch.float64)
    if name in ("gaussian", "uniform", "laplace", "student_t", "rademacher", "sparse"):
        return torch.zeros(d, dtype=torch.float64), eye
    if name == "shifted_gaussian":
        return torch.full((d,), SHIFT, dtype=torch.float64), eye
    if name in ("data", "data_noise"):
        x = data.to(torch.float64)
        mean, cov = x.mean(0), torch.cov(x.T, correction=0)
        return mean, cov + (DATA_NOISE**2 * eye if name == "data_noise" else 0)
    raise InvalidArgumentError(f"unknown distribution {name!r}: use one of {', '.join(DISTRIBUTIONS)}")
