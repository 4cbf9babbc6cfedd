"""Checkpoints: safetensors + architecture JSON round trips, state dicts, and clear errors."""

import json
import struct

import pytest
import torch

import tnsim
from tnsim import checkpoints as K
from tnsim.errors import CheckpointError

from models import bilinear, residual_stack


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    "make",
    [
        lambda: bilinear(3, 4, 2, bias=True),
        lambda: residual_stack(d=3, width=4, h=5, o=2, bias=True),
    ],
)
def test_round_trip(tmp_path, make):
    model = make()
    path = K.save(model, tmp_path / "m.safetensors", meta={"step": 7})
    # the file is plain safetensors: an 8-byte header length, then a JSON header, then raw data
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert json.loads(header["__metadata__"]["tnsim"])["model"] == K.describe(model)
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["format"] == "tnsim-checkpoint" and side["meta"] == {"step": 7}
    loaded = K.load(path)
    same_weights(model, loaded)
    assert type(loaded) is type(model) and loaded.training is False
    assert tnsim.similarity(model, loaded, measure="tensor") == pytest.approx(1.0, abs=1e-12)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x), loaded(x))
    # a lone .safetensors file still loads: the description is in its header too
    (tmp_path / "m.json").unlink()
    same_weights(model, K.load(path))
    assert K.meta(path) == {"step": 7}


def test_state_dicts_with_and_without_sidecar(tmp_path):
    plain = bilinear(3, 4, 2)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    same_weights(plain, K.load(tmp_path / "plain.pt"))  # architecture inferred from the names
    seq = torch.nn.Sequential(tnsim.nn.Linear(3, 4), tnsim.nn.Bilinear(4, 5, 2, bias=True)).double()
    torch.save({"state_dict": seq.state_dict()}, tmp_path / "seq.pth")
    loaded = K.load(tmp_path / "seq.pth")
    same_weights(seq, loaded)
    # residual connections have no parameters: the sidecar says so
    res = residual_stack(d=3, width=4, h=5, o=2)
    torch.save(res.state_dict(), tmp_path / "res.pt")
    (tmp_path / "res.json").write_text(
        json.dumps({"format": "tnsim-checkpoint", "version": 1, "model": K.describe(res)})
    )
    loaded = K.load(tmp_path / "res.pt")
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(res(x), loaded(x))


def test_errors_name_the_file_and_the_problem(tmp_path):
    model = bilinear(3, 4, 2)
    good = K.save(model, tmp_path / "good.safetensors")

    def fails(path, pattern):
        with pytest.raises(CheckpointError) as e:
            K.load(path)
        assert str(e.value).startswith(str(path)), str(e.value)
        assert pattern in str(e.value), str(e.value)
        assert "\n" not in str(e.value)

    fails(tmp_path / "missing.safetensors", "no such file")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    fails(tmp_path / "junk.safetensors", "not a valid safetensors file")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:40])
    fails(tmp_path / "cut.safetensors", "not a valid safetensors file")
    torch.save(model, tmp_path / "pickled.pt")  # a whole module: needs unpickling, refused
    fails(tmp_path / "pickled.pt", "pickled")
    (tmp_path / "notes.txt").write_text("hello")
    fails(tmp_path / "notes.txt", "unknown checkpoint type")
    torch.save({"a": 1}, tmp_path / "nodict.pt")
    fails(tmp_path / "nodict.pt", "not a state dict")
    fails(tmp_path, "is a directory")
    # the description does not match the tensors
    K.save(bilinear(3, 4, 2), tmp_path / "shape.safetensors")
    (tmp_path / "shape.json").write_text(
        json.dumps(
            {"format": "tnsim-checkpoint", "version": 1, "model": K.describe(bilinear(3, 5, 2))}
        )
    )
    fails(
        tmp_path / "shape.safetensors",
        "'left.weight' has shape (4, 3) but the architecture in shape.json needs (5, 3)",
    )
    K.save(bilinear(3, 4, 2), tmp_path / "keys.safetensors")
    (tmp_path / "keys.json").write_text(
        json.dumps(
            {
                "format": "tnsim-checkpoint",
                "version": 1,
                "model": K.describe(bilinear(3, 4, 2, bias=True)),
            }
        )
    )
    fails(tmp_path / "keys.safetensors", "missing left.bias, right.bias, down.bias")
    K.save(model, tmp_path / "badjson.safetensors")
    (tmp_path / "badjson.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="badjson.json: unreadable architecture JSON"):
        K.load(tmp_path / "badjson.safetensors")
    K.save(model, tmp_path / "kind.safetensors")
    (tmp_path / "kind.json").write_text(
        json.dumps({"format": "tnsim-checkpoint", "version": 1, "model": {"type": "ReLU"}})
    )
    with pytest.raises(
        CheckpointError, match="kind.json: bad architecture: model: unknown layer type 'ReLU'"
    ):
        K.load(tmp_path / "kind.safetensors")
    nan = bilinear(3, 4, 2)
    with torch.no_grad():
        nan.down.weight[0, 0] = float("nan")
    K.save(nan, tmp_path / "nan.safetensors")
    fails(tmp_path / "nan.safetensors", "NaN")


def test_describe_refuses_unknown_layers():
    with pytest.raises(TypeError, match="ReLU"):
        K.describe(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))


# --- every tnsim.nn module, compiled networks, and refusals before allocating ------------------


def _seq(*mods):
    return torch.nn.Sequential(*mods).double()


def _every_module():
    torch.manual_seed(3)
    nn = tnsim.nn
    return {
        "linear": (nn.Linear(3, 2, bias=True).double(), (3,)),
        "unembedding": (nn.Unembedding(3, 4).double(), (3,)),
        "trilinear": (nn.Trilinear(3, 4, 3, bias=True, residual=True).double(), (3,)),
        "trilinear_plain": (nn.Trilinear(3, 2, 2).double(), (3,)),
        "attention": (nn.BilinearAttention(2, 3, n_heads=2, d_head=1, causal=False, squared=True,
                                            residual=True, scale=0.7).double(), (3, 2)),
        "attention_rope_paired": (nn.BilinearAttention(4, 3, n_heads=2, bias=True, rope=True, paired=True,
                                                       residual=True, rope_base=100.0).double(), (3, 4)),
        "block": (nn.TensorTransformerBlock(2, 2, d_hidden=3, bias=True).double(), (2, 2)),
        "embedding": (nn.Embedding(3, 2).double(), (2, 3)),
        "language_model": (
            _seq(nn.Embedding(2, 2, n_ctx=2, positional=True),
                 nn.TensorTransformerBlock(2, 2, d_hidden=1), nn.Unembedding(2, 2)),
            (2, 2),
        ),
    }


@pytest.mark.parametrize("name", sorted(_every_module()))
def test_every_nn_module_round_trips(tmp_path, name):
    model, shape = _every_module()[name]
    other, _ = _every_module()[name]
    with torch.no_grad():  # a second model of the same architecture, other weights
        for p in other.parameters():
            p.add_(0.3 * torch.randn_like(p))
    path = K.save(model, tmp_path / f"{name}.safetensors")
    loaded = K.load(path)
    assert type(loaded) is type(model) and repr(loaded) == repr(model)
    same_weights(model, loaded)
    x = torch.randn(5, *shape, dtype=torch.float64)
    assert torch.equal(loaded(x), model(x))
    assert tnsim.similarity(loaded, model, measure="tensor") == pytest.approx(1.0, abs=1e-9)
    assert tnsim.similarity(loaded, other, measure="tensor") == tnsim.similarity(model, other, measure="tensor")
    # without the sidecar, from the safetensors header
    (tmp_path / f"{name}.json").unlink()
    assert torch.equal(K.load(path)(x), model(x))


def test_describe_refuses_what_it_would_not_reproduce():
    block = tnsim.nn.TensorTransformerBlock(2, 2)
    block.attn.scale = 3.0  # the block's JSON has no field for it
    with pytest.raises(TypeError, match="'scale' = 3.0"):
        K.describe(block)
    with pytest.raises(TypeError, match=r"tnsim.compile\(module, example_input\)"):
        K.save(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), "unused.safetensors")


class Quadratic(torch.nn.Module):
    """A user module tnsim only knows by tracing: y = W (x * (A x)) + x, with a bias."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.A = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.float64))
        self.W = torch.nn.Parameter(torch.randn(2, 3, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))

    def forward(self, x):
        return torch.einsum("oi,...i->...o", self.W, x * (x @ self.A.T)) + self.b + x[..., :2]


def _same_network(a: tnsim.Network, b: tnsim.Network):
    assert a.structure == b.structure and a.name == b.name
    assert (a.in_padded, a.out_padded) == (b.in_padded, b.out_padded)
    for ta, tb in zip(a.terms + (a.raw or ()), b.terms + (b.raw or ()), strict=True):
        assert (ta.tags, ta.group, ta.coeff, ta.batch, ta.support) == (tb.tags, tb.group, tb.coeff, tb.batch, tb.support)
        assert all(torch.equal(x, y) for x, y in zip(ta.arrays, tb.arrays, strict=True))
    assert (a.layers is None) == (b.layers is None)
    for la, lb in zip(a.layers or (), b.layers or (), strict=True):
        _same_network(la, lb)


@pytest.mark.parametrize("case", ["traced", "residual_stack", "attention", "stacked"])
def test_compiled_networks_round_trip(tmp_path, case):
    if case == "traced":
        net = tnsim.compile(Quadratic(), torch.zeros(3, dtype=torch.float64))
    elif case == "residual_stack":
        net = tnsim.compile(residual_stack(d=3, width=3, h=4, o=2, bias=True))
    elif case == "attention":
        net = tnsim.compile(_every_module()["block"][0])
    else:
        net = tnsim.stack([tnsim.compile(bilinear(3, 4, 2, seed=s)) for s in range(3)])
    path = K.save(net, tmp_path / "net.safetensors", meta={"kind": case})
    loaded = K.load(path)
    assert isinstance(loaded, tnsim.Network) and K.meta(path) == {"kind": case}
    _same_network(net, loaded)
    if case == "stacked":
        M = tnsim.similarity_matrix(loaded, measure="tensor", progress=False)
        assert torch.equal(M, tnsim.similarity_matrix(net, measure="tensor", progress=False))
        return
    assert tnsim.similarity(loaded, net, measure="tensor") == pytest.approx(1.0, abs=1e-9)
    for measure in ("tensor", "gaussian"):
        assert tnsim.inner(loaded, net, measure=measure) == tnsim.inner(net, net, measure=measure)
    # shared arrays stay shared (one tensor per distinct array in the file)
    distinct = {id(x) for t in net.terms + (net.raw or ()) for x in t.arrays}
    distinct |= {id(x) for layer in net.layers or () for t in layer.terms + (layer.raw or ()) for x in t.arrays}
    assert len(K.load_state_dict(path)[0]) == len(distinct)


def test_network_json_is_validated(tmp_path):
    path = K.save(tnsim.compile(bilinear(3, 4, 2)), tmp_path / "n.safetensors")
    header = json.loads((tmp_path / "n.json").read_text())

    def broken(edit, pattern):
        h = json.loads(json.dumps(header))
        edit(h["model"])
        (tmp_path / "n.json").write_text(json.dumps(h))
        with pytest.raises(CheckpointError, match=pattern) as e:
            K.load(path)
        assert str(e.value).startswith(str(tmp_path / "n.json")) or str(e.value).startswith(str(path))

    broken(lambda m: m["terms"][0]["group"].append([0, 0]), "not a permutation")
    broken(lambda m: m["terms"][0].__setitem__("arrays", [0, 1, 2, 9]), "array 9 is not in the weights file")
    broken(lambda m: m["terms"][0].__setitem__("coeff", "one"), "'coeff' must be a finite number")
    broken(lambda m: m.__setitem__("in_shape", [7]), "takes inputs of shape")
    broken(lambda m: m.pop("layers"), "needs exactly the fields")


def test_residual_state_dict_without_sidecar_is_refused(tmp_path):
    res = residual_stack(d=3, width=4, h=5, o=2)
    torch.save(res.state_dict(), tmp_path / "res.pt")
    with pytest.raises(CheckpointError) as e:
        K.load(tmp_path / "res.pt")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "res.pt")) and "residual" in msg and "res.json" in msg
    # ... and loads as the right model given the architecture (a dict or a template module)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(K.load(tmp_path / "res.pt", arch=K.describe(res))(x), res(x))
    assert torch.equal(K.load(tmp_path / "res.pt", arch=residual_stack(seed=9))(x), res(x))
    # a bilinear layer that changes width cannot be residual: inferred
    plain = bilinear(3, 4, 2)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    assert torch.equal(K.load(tmp_path / "plain.pt")(x), plain(x))
    # attention needs the sidecar
    torch.save(_every_module()["attention"][0].state_dict(), tmp_path / "attn.pt")
    with pytest.raises(CheckpointError, match="attention layer"):
        K.load(tmp_path / "attn.pt")


def _sidecar_with(tmp_path, model, arch_or_text):
    path = K.save(model, tmp_path / "m.safetensors")
    text = arch_or_text if isinstance(arch_or_text, str) else json.dumps(
        {"format": "tnsim-checkpoint", "version": 1, "model": arch_or_text}
    )
    (tmp_path / "m.json").write_text(text)
    return path


def test_hostile_sidecars_are_refused_before_allocating(tmp_path):
    model = bilinear(3, 4, 2)
    deep = '{"format": "tnsim-checkpoint", "version": 1, "model": ' + "[" * 3000 + "]" * 3000 + "}"
    with pytest.raises(CheckpointError, match="m.json: unreadable architecture JSON: nested deeper than 64"):
        K.load(_sidecar_with(tmp_path, model, deep))
    nested = {"type": "Identity"}
    for _ in range(100):
        nested = {"type": "Sequential", "layers": [nested]}
    with pytest.raises(CheckpointError, match="nested deeper"):
        K.load(_sidecar_with(tmp_path, model, nested))
    # 16 TB of weights described, 30 floats in the file: refused on the shapes, nothing allocated
    huge = {**K.describe(model), "d_hidden": 10**12}
    with pytest.raises(CheckpointError, match=r"'left.weight' has shape \(4, 3\) but .* needs \(1000000000000, 3\)"):
        K.load(_sidecar_with(tmp_path, model, huge))
    # a buffer the file does not hold (the attention mask, n_ctx x n_ctx) must fit the memory limit
    attn = tnsim.nn.BilinearAttention(2, 3).double()
    with pytest.raises(CheckpointError, match=r"bad architecture: buffers \(largest 'mask'\).*memory limit"):
        K.load(_sidecar_with(tmp_path, attn, {**K.describe(attn), "n_ctx": 10**7}))
    for edit, pattern in (
        ({"bias": 1}, "'bias' must be true or false"),
        ({"d_in": 3.0}, "'d_in' must be a positive integer"),
        ({"widht": 3}, "unknown field"),
    ):
        with pytest.raises(CheckpointError, match=pattern):
            K.load(_sidecar_with(tmp_path, model, {**K.describe(model), **edit}))


def test_a_network_field_the_format_does_not_know_is_refused(tmp_path, monkeypatch):
    net = tnsim.compile(bilinear(3, 4, 2))
    monkeypatch.setitem(K._SAVED_FIELDS, tnsim.Term, K._SAVED_FIELDS[tnsim.Term] - {"support"})
    with pytest.raises(TypeError, match=r"Term with field\(s\) \['support'\]"):
        K.save(net, tmp_path / "n.safetensors")
