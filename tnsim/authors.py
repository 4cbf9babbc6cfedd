r"""Checkpoints of the paper's research code (``tdooms/tensor-similarity``), loaded for tnsim.

That code's layers, and the state-dict names they save under:

* ``Linear`` — ``weight`` (``d_out x d_in``), no bias: the embedding ``embed`` and read-out
  ``head``;
* ``MLP`` — a bilinear MLP with a *folded* residual,
  :math:`y = (1-s)\,x + s\,(D(Lx \odot Rx) + b)`: ``l.weight``, ``r.weight`` (no bias),
  ``d.weight`` and, with ``bias``, ``d.bias``; :math:`s` = ``scale`` (1: no residual);
* ``Attention`` — bilinear attention with two score pairs, optional Q/K biases and rotary
  position embeddings (RoPE),
  :math:`y_t = (1-s)\,x_t + s\,W_O \sum_{u} M_{tu}\, \frac{(\tilde q^1_t\cdot\tilde k^1_u)
  (\tilde q^2_t\cdot\tilde k^2_u)}{d_{head}^2}\, v_u` per head, where
  :math:`\tilde q_t = \mathrm{RoPE}_t(W_Q x_t + b_Q)` (likewise :math:`k`), :math:`M` the
  ``causal``, ``none`` (all ones) or ``diag`` mask: ``q1``, ``k1``, ``q2``, ``k2`` (weight,
  and bias with ``bias``), ``v.weight``, ``o.weight``; RoPE rotates the two halves of each
  head by the angles :math:`t\,\theta_i`, :math:`\theta_i = 10000^{-2i/d_{head}}`;
* models: ``ToyModel`` (``embed``, one ``body`` MLP, ``head``), ``DeepMLP`` (``embed``,
  ``body.N`` MLPs, ``head``) and ``Transformer`` (``embed``, ``body.N.attn`` and
  ``body.N.mlp``, ``head``).

:func:`load` reads such a state dict (a ``.safetensors`` or ``torch.save`` file, never
unpickling, or the dict itself) with the few settings its shapes do not show (``config``). MLP
models become :mod:`tnsim.nn` modules (``Linear``, ``Bilinear``; the folded residual's
factors are moved into the weights exactly), compiled without an example input. Transformers
become :class:`Transformer`, a plain PyTorch module of the same equations that
:func:`tnsim.trace` compiles (``tnsim.compile(model, input_shape=model.input_shape)``): :mod:`tnsim.nn`
has no two-score-pair attention, Q/K biases or RoPE yet.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import load_state_dict
from .errors import CheckpointError, InvalidArgumentError
from .nn import Bilinear, Linear

__all__ = ["load", "Transformer", "TwoPairAttention", "FoldedBilinearMLP", "rotary", "MASKS"]

#: Attention masks of the research code.
MASKS = ("causal", "none", "diag")
ROPE_BASE = 10_000
#: ``config`` keys :func:`load` understands (the research code's constructor arguments).
CONFIG_KEYS = {
    "n_head", "n_ctx", "mask", "scale", "bias", "d_input", "d_model", "d_hidden", "d_output",
    "n_layer", "n_layers", "expansion",
}


def rotary(n_ctx: int, d_head: int, dtype=torch.float64) -> torch.Tensor:
    r"""RoPE as matrices: ``R[t]`` (``d_head x d_head``) rotates coordinate pairs
    :math:`(i, i + d_{head}/2)` by the angle :math:`t\,\theta_i`."""
    half = d_head // 2
    theta = ROPE_BASE ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)
    angle = torch.arange(n_ctx, dtype=torch.float64)[:, None] * theta[None, :]  # (t, half)
    cos, sin = angle.cos(), angle.sin()
    r = torch.zeros(n_ctx, d_head, d_head, dtype=torch.float64)
    i = torch.arange(half)
    r[:, i, i] = cos
    r[:, i + half, i + half] = cos
    r[:, i, i + half] = -sin
    r[:, i + half, i] = sin
    return r.to(dtype)


def _mask(kind: str, n_ctx: int) -> torch.Tensor:
    ones = torch.ones(n_ctx, n_ctx)
    return {"causal": torch.tril(ones), "none": ones, "diag": torch.eye(n_ctx)}[kind]


class TwoPairAttention(torch.nn.Module):
    """The research code's ``Attention`` (see the module docstring), with its parameter names."""

    def __init__(self, d_model: int, n_head: int, n_ctx: int, mask: str = "causal",
                 bias: bool = False, scale: float = 1.0):
        super().__init__()
        if d_model % n_head or (d_model // n_head) % 2:
            raise InvalidArgumentError(f"d_model {d_model} must split into {n_head} heads of even width")
        self.n_head, self.d_head, self.n_ctx, self.scale = n_head, d_model // n_head, n_ctx, float(scale)
        self.mask_kind = mask
        for name in ("q1", "k1", "q2", "k2"):
            setattr(self, name, torch.nn.Linear(d_model, d_model, bias=bias))
        self.v = torch.nn.Linear(d_model, d_model, bias=False)
        self.o = torch.nn.Linear(d_model, d_model, bias=False)
        self.register_buffer("rope", rotary(n_ctx, self.d_head), persistent=False)  # float64 until .to()
        self.register_buffer("mask", _mask(mask, n_ctx), persistent=False)

    def _heads(self, lin: torch.nn.Linear, x: torch.Tensor, rope: bool) -> torch.Tensor:
        y = lin(x).unflatten(-1, (self.n_head, self.d_head))  # (..., t, h, e)
        if rope:
            n = x.shape[-2]
            y = torch.einsum("tfe,...the->...thf", self.rope[:n].to(y.dtype), y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        q1, k1, q2, k2 = (self._heads(getattr(self, m), x, True) for m in ("q1", "k1", "q2", "k2"))
        v = self._heads(self.v, x, False)
        s1 = torch.einsum("...the,...uhe->...htu", q1, k1)
        s2 = torch.einsum("...the,...uhe->...htu", q2, k2)
        pattern = s1 * s2 * self.mask[:n, :n].to(s1.dtype) / (self.d_head * self.d_head)
        z = torch.einsum("...htu,...uhe->...the", pattern, v).flatten(-2)
        return (1 - self.scale) * x + self.scale * self.o(z)

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, n_ctx={self.n_ctx}, mask={self.mask_kind!r}, scale={self.scale}"


class FoldedBilinearMLP(torch.nn.Module):
    """The research code's ``MLP``: ``(1 - scale) x + scale (d(l(x) * r(x)))``."""

    def __init__(self, d_model: int, d_hidden: int, scale: float = 1.0, bias: bool = True):
        super().__init__()
        self.scale = float(scale)
        self.l = torch.nn.Linear(d_model, d_hidden, bias=False)
        self.r = torch.nn.Linear(d_model, d_hidden, bias=False)
        self.d = torch.nn.Linear(d_hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.scale) * x + self.scale * self.d(self.l(x) * self.r(x))


class _Layer(torch.nn.Module):
    def __init__(self, attn: TwoPairAttention, mlp: FoldedBilinearMLP):
        super().__init__()
        self.attn, self.mlp = attn, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class Transformer(torch.nn.Module):
    """The research code's ``Transformer``: ``embed``, ``body.N.{attn, mlp}``, ``head``, on
    inputs of shape ``(..., n_ctx, d_input)``. Compile it with
    ``tnsim.compile(model, input_shape=model.input_shape)`` (traced)."""

    def __init__(self, d_input: int, d_model: int, n_head: int, n_ctx: int, d_hidden: int,
                 d_output: int, n_layer: int = 2, mask: str = "causal", bias: bool = False,
                 scale: float = 1.0):
        super().__init__()
        self.n_ctx, self.d_input = n_ctx, d_input
        self.embed = Linear(d_input, d_model)
        self.body = torch.nn.ModuleList(
            _Layer(TwoPairAttention(d_model, n_head, n_ctx, mask, bias, scale),
                   FoldedBilinearMLP(d_model, d_hidden, scale, bias))
            for _ in range(n_layer)
        )
        self.head = Linear(d_model, d_output)

    @property
    def input_shape(self) -> tuple[int, int]:
        """The unbatched input shape ``(n_ctx, d_input)``, for ``tnsim.compile(model,
        input_shape=model.input_shape)``."""
        return (self.n_ctx, self.d_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.body:
            x = layer(x)
        return self.head(x)


# --- loading ---------------------------------------------------------------------------------


def _state(source) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, dict):
        return dict(source), "state dict"
    tensors, _ = load_state_dict(source)
    return tensors, str(Path(source))


def _kind(tensors: dict, where: str) -> str:
    if any(k.startswith("body.") and ".attn." in k for k in tensors):
        return "transformer"
    if "body.l.weight" in tensors:
        return "toy"
    if "body.0.l.weight" in tensors:
        return "deep"
    raise CheckpointError(
        f"{where}: not a state dict of the research code's ToyModel, DeepMLP or Transformer "
        f"(expected body.l.weight, body.0.l.weight or body.0.attn.q1.weight; got "
        f"{', '.join(sorted(tensors)[:4])} ...)"
    )


def _layers(tensors: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in tensors if k.startswith(prefix)}
    if idx != set(range(len(idx))):
        raise CheckpointError(f"layers {sorted(idx)} under {prefix!r} are not numbered 0..{len(idx) - 1}")
    return len(idx)


def _config(tensors: dict, config: dict | None, kind: str, where: str) -> dict:
    """Sizes from the shapes; the rest from ``config``, whose sizes must agree with them."""
    config = dict(config or {})
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{where}: unknown config key(s) {unknown} (known: {sorted(CONFIG_KEYS)})")
    d_model, d_input = tensors["embed.weight"].shape
    first = "body.l" if kind == "toy" else ("body.0.mlp.l" if kind == "transformer" else "body.0.l")
    n_layer = 1 if kind == "toy" else _layers(tensors, "body.")
    sizes = {
        "d_input": d_input, "d_model": d_model, "d_output": tensors["head.weight"].shape[0],
        "d_hidden": tensors[first + ".weight"].shape[0], "n_layer": n_layer,
        "bias": (first[:-1] + "d.bias") in tensors,
    }
    given = dict(config)
    if "n_layers" in given:
        given["n_layer"] = given.pop("n_layers")
    if "expansion" in given:
        given["d_hidden"] = given.pop("expansion") * given.get("d_model", d_model)
    for key, value in sizes.items():
        if key in given and given[key] != value:
            raise CheckpointError(f"{where}: config says {key}={given[key]!r}, the tensors have {value!r}")
    out = {**sizes, "scale": float(given.get("scale", 1.0))}
    if kind == "transformer":
        for key in ("n_head", "n_ctx"):
            if not isinstance(given.get(key), int) or given[key] < 1:
                raise CheckpointError(f"{where}: a Transformer needs config[{key!r}] (a positive integer)")
        mask = given.get("mask", "causal")
        if mask not in MASKS:
            raise CheckpointError(f"{where}: mask {mask!r} is not one of {', '.join(MASKS)}")
        out.update(n_head=given["n_head"], n_ctx=given["n_ctx"], mask=mask)
    return out


def _fold_mlp(tensors: dict, prefix: str, bias: bool, scale: float, carried: float):
    """``(tnsim.nn.Bilinear, new carried factor)`` computing the research ``MLP`` at ``prefix``
    on inputs ``carried * u`` (the true activation is ``carried`` times the module's output).

    ``(1-s) C u + s (C^2 D(Lu * Ru) + b)`` is, for ``c = (1-s) C != 0``,
    ``c (u + (s C^2 / c) D(Lu * Ru) + (s / c) b)``: a residual bilinear layer, factor ``c``
    carried on; for ``s = 1`` a plain bilinear layer with ``s C^2 D`` and ``s b``.
    """
    L, R, D = (tensors[f"{prefix}{n}.weight"] for n in "lrd")
    b = tensors.get(f"{prefix}d.bias")
    c = (1 - scale) * carried
    residual = c != 0
    down, down_bias, new = (scale * carried**2 / c, scale / c, c) if residual else (
        scale * carried**2, scale, 1.0)
    layer = Bilinear(L.shape[1], L.shape[0], D.shape[0], bias=bias, residual=residual).to(L.dtype)
    with torch.no_grad():
        layer.left.weight.copy_(L)
        layer.right.weight.copy_(R)
        layer.down.weight.copy_(down * D)
        if bias:
            layer.left.bias.zero_()
            layer.right.bias.zero_()
            layer.down.bias.copy_(down_bias * b)
    return layer, new


def _mlp_model(tensors: dict, cfg: dict, kind: str) -> torch.nn.Sequential:
    dtype = tensors["embed.weight"].dtype
    embed = Linear(cfg["d_input"], cfg["d_model"]).to(dtype)
    layers, carried = [], 1.0
    prefixes = ["body."] if kind == "toy" else [f"body.{i}." for i in range(cfg["n_layer"])]
    for prefix in prefixes:
        layer, carried = _fold_mlp(tensors, prefix, cfg["bias"], cfg["scale"], carried)
        layers.append(layer)
    head = Linear(cfg["d_model"], cfg["d_output"]).to(dtype)
    with torch.no_grad():
        embed.weight.copy_(tensors["embed.weight"])
        head.weight.copy_(carried * tensors["head.weight"])
    return torch.nn.Sequential(embed, *layers, head).eval()


def _transformer(tensors: dict, cfg: dict, where: str) -> Transformer:
    keys = ("d_input", "d_model", "n_head", "n_ctx", "d_hidden", "d_output", "n_layer", "mask",
            "bias", "scale")
    try:
        model = Transformer(**{k: cfg[k] for k in keys})
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    model = model.to(tensors["embed.weight"].dtype)
    _load_exact(model, tensors, where)
    return model.eval()


def _load_exact(model: torch.nn.Module, tensors: dict, where: str) -> None:
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{where}: missing {missing[:4]}, unexpected {extra[:4]}")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{where}: {k!r} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}")
    model.load_state_dict(tensors, strict=True)


def load(source, config: dict | None = None) -> torch.nn.Module:
    """A research-code checkpoint as a module tnsim compiles (see the module docstring).

    Parameters
    ----------
    source
        A state dict, or a ``.safetensors`` / ``torch.save`` file (read without unpickling).
    config
        What the shapes do not show: ``scale`` (default 1), and for a Transformer ``n_head``,
        ``n_ctx`` and ``mask`` (default ``"causal"``). Sizes given here (``d_model``,
        ``n_layer``, ``bias``, ...) are checked against the tensors.

    Raises
    ------
    CheckpointError
        Not such a state dict, or the config disagrees with it (the message names the file).
    """
    tensors, where = _state(source)
    kind = _kind(tensors, where)
    cfg = _config(tensors, config, kind, where)
    for k, t in tensors.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: tensor {k!r} is not floating point or not finite")
    if kind == "transformer":
        return _transformer(tensors, cfg, where)
    expected = {"embed.weight", "head.weight"}
    prefixes = ["body."] if kind == "toy" else [f"body.{i}." for i in range(cfg["n_layer"])]
    for p in prefixes:
        expected |= {f"{p}l.weight", f"{p}r.weight", f"{p}d.weight"} | ({f"{p}d.bias"} if cfg["bias"] else set())
    if set(tensors) != expected:
        raise CheckpointError(
            f"{where}: unexpected {sorted(set(tensors) - expected)[:4]}, missing {sorted(expected - set(tensors))[:4]}"
        )
    return _mlp_model(tensors, cfg, kind)
