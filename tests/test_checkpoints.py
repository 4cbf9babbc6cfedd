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
