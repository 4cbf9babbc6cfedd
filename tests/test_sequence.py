"""Sequence models: positionwise layers, token embeddings, outputs at selected positions.

Inputs X of shape (n, d); the Gaussian measure has i.i.d. positions (covariance I_n (x) Sigma);
the tensor measure uses one constant coordinate for the whole padded input. Oracles work in
canonical coordinates over (1, vec X) (tests/brute_seq.py).
"""

import brute
import brute_seq as bs
import numpy as np
import pytest
import torch
from seqmodels import D, N, attention, gaussian_params, rel, run_network

import tnsim
from tnsim.measures import Space, TensorMeasure, _tensor

RTOL = 1e-10


def positionwise_stack(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        tnsim.nn.Bilinear(D, 3, D, bias=True, residual=True), tnsim.nn.Bilinear(D, 3, 2, bias=True)
    ).double()


def test_positionwise_stack_all_methods():
    a, b = positionwise_stack(1), positionwise_stack(2)
    x0 = torch.zeros(1, N, D, dtype=torch.float64)  # a batch of one sequence
    na, nb = tnsim.compile(a, x0), tnsim.compile(b, x0)
    assert na.in_shape == (N, D + 1) and na.out_shape == (N, 3)
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    La, Lb = bs.layer_tensors(a, N), bs.layer_tensors(b, N)
    mean, cov = gaussian_params(seed=3)
    assert rel(tnsim.inner(na, nb, measure="tensor", method="exact"), bs.tensor_inner(Ca, Cb)) < RTOL
    assert rel(tnsim.inner(na, nb, measure="tensor", method="recursive"), bs.hierarchical_inner(La, Lb)) < RTOL
    want = bs.quadrature_inner(a, b, N, D, 8, mean, cov)
    assert rel(tnsim.inner(na, nb, method="exact", mean=mean, cov=cov), want) < RTOL
    got = tnsim.inner(na, nb, method="recursive", mean=mean, cov=cov, centred=True)
    assert rel(got, bs.closure_inner(La, Lb, N, mean, cov, centred=True)) < RTOL


@pytest.mark.parametrize("positions", [[1], 0, [1, 0]])
def test_outputs_at_selected_positions(positions):
    a, b = attention(seed=1, residual=True), attention(seed=2, residual=True)
    sa = tnsim.at_positions(tnsim.compile(a), positions)
    sb = tnsim.at_positions(tnsim.compile(b), positions)
    pos = [positions] if isinstance(positions, int) else positions
    assert sa.real_out_shape == ((D,) if isinstance(positions, int) else (len(pos), D))
    x = torch.randn(N, D, dtype=torch.float64)
    assert torch.allclose(run_network(sa, x), a(x)[positions], atol=1e-12)
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    idx = bs.out_index(N, D, positions=pos)
    want_t = bs.tensor_inner(Ca, Cb, idx)
    want_g = bs.quadrature_inner(a, b, N, D, 6, select=lambda y: y[:, pos])
    for method in ("exact", "recursive"):
        assert rel(tnsim.inner(sa, sb, measure="tensor", method=method), want_t) < RTOL
        assert rel(tnsim.inner(sa, sb, method=method), want_g) < RTOL


def test_selected_positions_of_a_two_layer_model_recursive():
    a, b = positionwise_stack(1), positionwise_stack(2)
    x0 = torch.zeros(1, N, D, dtype=torch.float64)  # a batch of one sequence
    sa = tnsim.at_positions(tnsim.compile(a, x0), [0])
    sb = tnsim.at_positions(tnsim.compile(b, x0), [0])
    assert len(sa.chain) == 2
    La, Lb = bs.layer_tensors(a, N), bs.layer_tensors(b, N)
    idx = bs.out_index(N, 2, positions=[0])
    assert rel(tnsim.inner(sa, sb, measure="tensor", method="recursive"), bs.hierarchical_inner(La, Lb, idx)) < RTOL


def test_feature_slices_apply_at_every_position():
    a, b = attention(seed=3, n_heads=2, d_head=1), attention(seed=4, n_heads=2, d_head=1)
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    idx = bs.out_index(N, D, features=[1])
    assert rel(tnsim.inner(a, b, measure="tensor", outputs=[1]), bs.tensor_inner(Ca, Cb, idx)) < RTOL
    assert rel(tnsim.inner(a, b, outputs=[1]), bs.gaussian_inner(Ca, Cb, N, d=D, outputs=idx)) < RTOL


def token_model(seed, vocab=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        tnsim.nn.Embedding(vocab, D, n_ctx=N, positional=True),
        tnsim.nn.BilinearAttention(D, N, residual=True),
        tnsim.nn.Unembedding(D, vocab),
    ).double()


def test_token_embedding_and_unembedding():
    a, b = token_model(1), token_model(2)
    tokens = torch.tensor([2, 0])
    onehot = torch.nn.functional.one_hot(tokens, 3).double()
    assert torch.allclose(a(tokens), a(onehot))
    na = tnsim.compile(a)
    assert na.in_shape == (N, 4) and na.in_padded  # positional vectors need the constant
    assert torch.allclose(run_network(na, onehot), a(onehot), atol=1e-12)
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    np.testing.assert_allclose(bs.evaluate(Ca, onehot.numpy()), a(onehot).detach().numpy(), atol=1e-12)
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact"), bs.tensor_inner(Ca, Cb)) < RTOL
    assert rel(tnsim.inner(a, b, method="exact"), bs.quadrature_inner(a, b, N, 3, 6)) < RTOL
    # embedding and unembedding are linear: one (fused) layer, recursive = exact
    assert rel(tnsim.inner(a, b, method="recursive"), tnsim.inner(a, b, method="exact")) < RTOL


def test_trilinear_positionwise_with_mean_and_covariance():
    torch.manual_seed(5)
    a = tnsim.nn.Trilinear(D, 3, D, bias=True, residual=True).double()
    b = tnsim.nn.Trilinear(D, 3, D, bias=True, residual=True).double()
    x0 = torch.zeros(1, N, D, dtype=torch.float64)  # a batch of one sequence
    na, nb = tnsim.compile(a, x0), tnsim.compile(b, x0)
    assert na.terms[0].group_order == 6  # the symmetric CP node's S_3
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    mean, cov = gaussian_params(seed=6)
    assert rel(tnsim.inner(na, nb, measure="tensor", method="exact"), bs.tensor_inner(Ca, Cb)) < RTOL
    for centred in (False, True):
        want = bs.quadrature_inner(a, b, N, D, 6, mean, cov, centred=centred)
        assert rel(tnsim.inner(na, nb, mean=mean, cov=cov, centred=centred, method="exact"), want) < RTOL
    # a vector and a sequence: per position, the vector model's Gaussian inner product
    Ta, Tb = bs.trilinear_tensor(a), bs.trilinear_tensor(b)
    want_vec = brute.gaussian_inner(Ta, Tb, mean, cov)
    assert rel(tnsim.inner(na, nb, mean=mean, cov=cov, method="exact"), N * want_vec) < RTOL


def test_sequence_shape_mismatch_is_named():
    a = attention(seed=1)
    b = attention(seed=1, n=3)
    with pytest.raises(tnsim.ShapeMismatchError, match=r"\(2, 2\).*\(3, 2\)"):
        tnsim.similarity(a, b)
    with pytest.raises(tnsim.StructureError, match="no position axis"):
        tnsim.at_positions(tnsim.compile(tnsim.nn.Bilinear(2, 3)), 0)
    with pytest.raises(tnsim.ShapeMismatchError, match="out of range"):
        tnsim.at_positions(tnsim.compile(a), [5])


def test_embedding_step_sums_the_metric_parts(monkeypatch):
    """A vocabulary wider than the model makes the embedding its own recursive step; the tensor
    metric on padded sequences is then applied as its two parts (positions joined on the real
    features, the constant on its own), each a cheaper contraction. The value is the brute-force
    tensor inner product (one attention layer: the hierarchical and the full symmetrisation
    agree), and the parts are what ran."""
    used = []
    whole = _tensor.TensorKernel.linear_parts
    monkeypatch.setattr(_tensor.TensorKernel, "linear_parts", lambda self: used.append(whole(self)) or used[-1])
    a, b = token_model(3, vocab=7), token_model(4, vocab=7)
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    assert rel(tnsim.inner(a, b, measure="tensor", method="recursive"), bs.tensor_inner(Ca, Cb)) < RTOL
    assert used and all(len(parts) == 2 for parts in used)
    assert rel(tnsim.similarity(a, b, measure="tensor", method="recursive"),
               bs.tensor_inner(Ca, Cb) / np.sqrt(bs.tensor_inner(Ca, Ca) * bs.tensor_inner(Cb, Cb))) < 1e-9


def test_metric_parts_sum_to_the_metric():
    """The parts' pieces, materialised over (position, feature) pairs, add up to the metric
    P[(t,i),(s,j)] = delta_ts [i=j>=1] + [i=0][j=0]."""
    n, d = 3, 4
    space = Space((n, d + 1), True)
    kernel = TensorMeasure().kernel(space, space, torch.zeros((), dtype=torch.float64))

    def dense(pieces):
        out = torch.ones(n, d + 1, n, d + 1, dtype=torch.float64)
        idx = {(0, 0): "t", (0, 1): "i", (1, 0): "s", (1, 1): "j"}
        for p in pieces:
            legs = "".join(idx[leg] for leg in p.legs)
            out = out * _broadcast(p.array, legs)
        return out

    def _broadcast(x, legs):
        shape = {"t": n, "i": d + 1, "s": n, "j": d + 1}
        view = [shape[c] if c in legs else 1 for c in "tisj"]
        order = sorted(range(len(legs)), key=lambda k: "tisj".index(legs[k]))
        return x.permute(order).reshape(view)

    want = torch.einsum("ts,ij->tisj", torch.eye(n, dtype=torch.float64), torch.diag(torch.tensor([0.0] + [1.0] * d,
                        dtype=torch.float64)))
    want[:, 0, :, 0] = 1
    parts = kernel.linear_parts()
    assert len(parts) == 2
    got = sum(dense(p.pair("a", "b")) for p in parts)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    flat = TensorMeasure().kernel(Space((d + 1,), True), Space((d + 1,), True), torch.zeros((), dtype=torch.float64))
    assert flat.linear_parts() == (flat,)  # no positions: the metric is already one identity
