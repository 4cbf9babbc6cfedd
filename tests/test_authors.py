"""Checkpoints of the paper's research code: the loaded models against forward passes written
here from the layer equations (folded residual, two score pairs, Q/K biases, RoPE)."""

import pytest
import torch

import tnsim
from tnsim import authors as A
from tnsim.errors import CheckpointError

from seqmodels import run_network


def rand(g, *shape):
    return 0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)


def mlp_state(g, prefix, d, h, bias):
    s = {f"{prefix}l.weight": rand(g, h, d), f"{prefix}r.weight": rand(g, h, d), f"{prefix}d.weight": rand(g, d, h)}
    if bias:
        s[f"{prefix}d.bias"] = rand(g, d)
    return s


def attn_state(g, prefix, d, bias):
    s = {f"{prefix}{n}.weight": rand(g, d, d) for n in ("q1", "k1", "q2", "k2", "v", "o")}
    if bias:
        s.update({f"{prefix}{n}.bias": rand(g, d) for n in ("q1", "k1", "q2", "k2")})
    return s


def ref_mlp(s, prefix, x, scale):
    """(1 - s) x + s (D (Lx * Rx) + b)."""
    hidden = (x @ s[f"{prefix}l.weight"].T) * (x @ s[f"{prefix}r.weight"].T)
    y = hidden @ s[f"{prefix}d.weight"].T + s.get(f"{prefix}d.bias", 0)
    return (1 - scale) * x + scale * y


def rope(x, positions):
    """Rotate-half RoPE on (..., t, heads, e): x cos + (-x2, x1) sin, angles t * 10000^(-2i/e)."""
    e = x.shape[-1]
    freq = 1.0 / 10000 ** (torch.arange(0, e, 2, dtype=torch.float64) / e)
    ang = positions[:, None] * freq[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    x1, x2 = x[..., : e // 2], x[..., e // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def ref_attention(s, prefix, x, n_head, mask, scale):
    t, d = x.shape[-2:]
    e = d // n_head
    pos = torch.arange(t, dtype=torch.float64)

    def proj(name, rotate=True):
        y = x @ s[f"{prefix}{name}.weight"].T + s.get(f"{prefix}{name}.bias", 0)
        y = y.reshape(*x.shape[:-1], n_head, e)
        return rope(y, pos) if rotate else y

    q1, k1, q2, k2, v = proj("q1"), proj("k1"), proj("q2"), proj("k2"), proj("v", rotate=False)
    out = torch.zeros_like(x)
    m = {"causal": torch.tril(torch.ones(t, t)), "none": torch.ones(t, t), "diag": torch.eye(t)}[mask]
    for h in range(n_head):
        pattern = (q1[..., h, :] @ k1[..., h, :].transpose(-1, -2)) * (q2[..., h, :] @ k2[..., h, :].transpose(-1, -2))
        pattern = pattern * m.double() / e**2
        z = pattern @ v[..., h, :]  # (..., t, e)
        out = out + z @ s[f"{prefix}o.weight"][:, h * e : (h + 1) * e].T
    return (1 - scale) * x + scale * out


@pytest.mark.parametrize("kind, scale, bias", [("deep", 0.6, True), ("deep", 1.0, False), ("toy", 0.25, True), ("deep", 0.0, True)])
def test_mlp_models_match_their_equations(tmp_path, kind, scale, bias):
    g = torch.Generator().manual_seed(0)
    d_in, d, h, d_out = 5, 3, 4, 2
    state = {"embed.weight": rand(g, d, d_in), "head.weight": rand(g, d_out, d)}
    prefixes = ["body."] if kind == "toy" else ["body.0.", "body.1."]
    for p in prefixes:
        state.update(mlp_state(g, p, d, h, bias))
    path = tmp_path / "research.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    model = A.load(path, {"scale": scale, "d_model": d})
    x = rand(g, 7, d_in)

    def reference(x):
        y = x @ state["embed.weight"].T
        for p in prefixes:
            y = ref_mlp(state, p, y, scale)
        return y @ state["head.weight"].T

    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    net = tnsim.compile(model)  # tnsim.nn layers: compiled without an example input
    torch.testing.assert_close(run_network(net, x[0]), reference(x[0]), rtol=1e-10, atol=1e-12)
    assert tnsim.similarity(A.load(state, {"scale": scale}), model) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("mask, bias, scale", [("causal", True, 0.7), ("none", False, 1.0), ("diag", True, 0.3)])
def test_transformer_matches_its_equations(mask, bias, scale):
    g = torch.Generator().manual_seed(1)
    d_in, d, n_head, n_ctx, h, d_out = 3, 4, 2, 3, 2, 2
    state = {"embed.weight": rand(g, d, d_in), "head.weight": rand(g, d_out, d)}
    state.update(attn_state(g, "body.0.attn.", d, bias))
    state.update(mlp_state(g, "body.0.mlp.", d, h, bias))
    model = A.load(state, {"n_head": n_head, "n_ctx": n_ctx, "mask": mask, "scale": scale})
    x = rand(g, 2, n_ctx, d_in)

    def reference(x):
        y = x @ state["embed.weight"].T
        y = ref_attention(state, "body.0.attn.", y, n_head, mask, scale)
        y = ref_mlp(state, "body.0.mlp.", y, scale)
        return y @ state["head.weight"].T

    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x[:, :2]), reference(x[:, :2]), rtol=1e-12, atol=1e-12)  # shorter
    # the traced network computes the same function
    net = tnsim.compile(model, input_shape=model.input_shape)
    torch.testing.assert_close(run_network(net, x[0]), reference(x[0]), rtol=1e-9, atol=1e-12)


def test_rotary_matrices_are_the_rotate_half_form():
    g = torch.Generator().manual_seed(2)
    x = rand(g, 5, 3, 6)  # (t, heads, e)
    got = torch.einsum("tfe,the->thf", A.rotary(5, 6), x)
    torch.testing.assert_close(got, rope(x, torch.arange(5, dtype=torch.float64)), rtol=1e-14, atol=1e-14)


def test_bad_research_checkpoints_are_named():
    g = torch.Generator().manual_seed(3)
    state = {"embed.weight": rand(g, 3, 5), "head.weight": rand(g, 2, 3), **mlp_state(g, "body.0.", 3, 4, True)}
    with pytest.raises(CheckpointError, match="config says d_model=4, the tensors have 3"):
        A.load(state, {"d_model": 4})
    with pytest.raises(CheckpointError, match="unknown config key"):
        A.load(state, {"heads": 2})
    with pytest.raises(CheckpointError, match="not a state dict of the research code"):
        A.load({"weight": rand(g, 2, 2)})
    seq = {"embed.weight": rand(g, 4, 3), "head.weight": rand(g, 2, 4), **attn_state(g, "body.0.attn.", 4, False),
           **mlp_state(g, "body.0.mlp.", 4, 2, False)}
    with pytest.raises(CheckpointError, match=r"needs config\['n_head'\]"):
        A.load(seq, {"n_ctx": 3})
    with pytest.raises(CheckpointError, match="mask 'full'"):
        A.load(seq, {"n_ctx": 3, "n_head": 2, "mask": "full"})
    with pytest.raises(CheckpointError, match="no such file"):
        A.load("missing.safetensors")
