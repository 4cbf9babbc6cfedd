"""Models written as einsum specs and quimb networks; the network algebra that combines them."""

import brute
import brute_seq as bs
import numpy as np
import pytest
import quimb.tensor as qtn
import torch
from seqmodels import D, N, attention, rel

import tnsim

RTOL = 1e-10


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def trilinear(seed, d=3, h=4, o=2, bias=False):
    torch.manual_seed(seed)
    return tnsim.nn.Trilinear(d, h, o, bias=bias).double()


def tri_spec(m: tnsim.nn.Trilinear, **kw) -> tnsim.Network:
    w = [m.down.weight, m.a.weight, m.b.weight, m.c.weight]
    return tnsim.network_from_spec("oh,hi,hj,hk->o", *w, inputs="i,j,k", **kw)


def test_trilinear_three_ways_against_brute_force():
    """Shipped module, spec and quimb network are the same model; all match brute force."""
    a, b = trilinear(1), trilinear(2, bias=True)
    Ta, Tb = bs.trilinear_tensor(a), bs.trilinear_tensor(b)
    spec = tri_spec(a)
    tn = qtn.TensorNetwork([
        qtn.Tensor(a.down.weight.detach().numpy(), inds=("o", "h"), tags={"D"}),
        qtn.Tensor(a.a.weight.detach().numpy(), inds=("h", "i"), tags={"A"}),
        qtn.Tensor(a.b.weight.detach().numpy(), inds=("h", "j"), tags={"B"}),
        qtn.Tensor(a.c.weight.detach().numpy(), inds=("h", "k"), tags={"C"}),
    ])
    quimb_net = tnsim.from_quimb(tn, inputs=["i", "j", "k"], outputs=["o"])
    want_t, want_g = brute.tensor_inner(Ta, Tb), brute.gaussian_inner(Ta, Tb)
    for model in (a, spec, quimb_net):
        assert rel(tnsim.inner(model, b, measure="tensor", method="exact"), want_t) < RTOL
        assert rel(tnsim.inner(model, b, method="exact"), want_g) < RTOL
        assert rel(tnsim.inner(model, b, method="recursive"), want_g) < RTOL  # one layer


def test_spec_attention_equals_shipped_attention():
    m, other = attention(seed=1, residual=False), attention(seed=2, residual=True)
    E = m.d_head
    Q, K, V = (getattr(m, n).weight.view(E, D) for n in "qkv")
    spec = tnsim.network_from_spec(
        "ei,ej,fk,of,ts->to", Q, K, V, m.o.weight, m.mask, inputs="ti,sj,sk", coeff=m.scale
    )
    assert spec.in_shape == (N, D) and spec.out_shape == (N, D)
    for measure in ("tensor", "gaussian"):
        assert rel(tnsim.inner(spec, other, measure=measure, method="exact"),
                   tnsim.inner(m, other, measure=measure, method="exact")) < RTOL


def test_automatic_symmetry_of_identical_factors():
    """D(Ax * Ax * Ax): the full S_3 is found, fewer contractions, same value."""
    A, Dm = rand(4, 3, seed=1), rand(2, 4, seed=2)
    auto = tnsim.network_from_spec("oh,hi,hj,hk->o", Dm, A, A, A, inputs="i,j,k")
    plain = tnsim.network_from_spec("oh,hi,hj,hk->o", Dm, A, A, A, inputs="i,j,k", symmetry=None)
    assert auto.terms[0].group_order == 6 and plain.terms[0].group_order == 1
    other = trilinear(3)
    for measure in ("tensor", "gaussian"):
        x = tnsim.compare(auto, other, measure=measure, method="exact")
        y = tnsim.compare(plain, other, measure=measure, method="exact")
        assert rel(x.inner, y.inner) < RTOL
        assert x.cost.contractions < y.cost.contractions


def test_declared_symmetries_are_verified():
    A, B, Dm = rand(4, 3, seed=1), rand(4, 3, seed=2), rand(2, 4, seed=3)
    ok = tnsim.term_from_spec("oh,hi,hj,hk->o", Dm, A, A, B, inputs="i,j,k", symmetry=[(1, 0, 2)])
    assert ok.group_order == 2
    with pytest.raises(tnsim.StructureError, match=r"not invariant under the copy permutation \(0, 2, 1\)"):
        tnsim.term_from_spec("oh,hi,hj,hk->o", Dm, A, A, B, inputs="i,j,k", symmetry=[(0, 2, 1)])
    with pytest.raises(tnsim.StructureError, match="not a permutation"):
        tnsim.term_from_spec("oh,hi,hj,hk->o", Dm, A, A, B, inputs="i,j,k", symmetry=[(0, 0, 1)])


def test_positionwise_spec_needs_the_position_size():
    L, R, Dm = rand(4, 3, seed=1), rand(4, 3, seed=2), rand(2, 4, seed=3)
    with pytest.raises(tnsim.StructureError, match=r"sizes=\{'t': n\}"):
        tnsim.network_from_spec("oh,hi,hj->to", Dm, L, R, inputs="ti,tj")
    seq = tnsim.network_from_spec("oh,hi,hj->to", Dm, L, R, inputs="ti,tj", sizes={"t": N})
    vec = tnsim.network_from_spec("oh,hi,hj->o", Dm, L, R, inputs="i,j")
    lifted = tnsim.positionwise(vec, N)
    for measure in ("tensor", "gaussian"):
        assert rel(tnsim.inner(seq, lifted, measure=measure), tnsim.inner(lifted, lifted, measure=measure)) < RTOL


@pytest.mark.parametrize(
    "spec,arrays,kw,err",
    [
        ("oh,hi->o", 3, {}, "names 2 arrays"),
        ("oh,hij->o", 2, {}, "shape"),
        ("oh,hi,hi->o", 3, {"inputs": "i,i"}, "share the feature"),
        ("oi->i", 1, {"inputs": "i"}, "output letter"),
        ("oh,hi", 2, {}, "explicit output"),
    ],
)
def test_spec_errors(spec, arrays, kw, err):
    shapes = {"oh": (2, 4), "hi": (4, 3), "hij": (4, 3), "oi": (3, 3)}
    groups = spec.split("->")[0].split(",")
    arrs = [rand(*shapes.get(g, (4, 3))) for g in (groups + groups)[:arrays]]
    kw = {"inputs": "i", **kw}
    with pytest.raises(tnsim.StructureError if err != "shape" else tnsim.ShapeMismatchError, match=err):
        tnsim.network_from_spec(spec, *arrs, **kw)


def test_from_quimb_checks_open_legs():
    tn = qtn.TensorNetwork([qtn.Tensor(np.ones((2, 3)), inds=("o", "i")), qtn.Tensor(np.ones(4), inds=("z",))])
    with pytest.raises(tnsim.StructureError, match="neither inputs nor outputs"):
        tnsim.from_quimb(tn, inputs=["i"], outputs=["o"])
    with pytest.raises(tnsim.StructureError, match="not in the network"):
        tnsim.from_quimb(tn, inputs=["i", "q"], outputs=["o", "z"])


# --- the network algebra -------------------------------------------------------------------


def _padded(T_real, K, constant=True):
    """Padded homogeneous tensor (o+1, (d+1)^K) of a homogeneous real tensor of degree k<=K."""
    k = T_real.ndim - 1
    o, d = T_real.shape[0], T_real.shape[1] if k else 0
    P = np.zeros((o + 1,) + (d + 1,) * K)
    P[(slice(1, None),) + (slice(1, None),) * k + (0,) * (K - k)] = T_real
    if constant:
        P[(0,) * (K + 1)] = 1
    return P


def test_composition_sum_concatenation_and_scaling():
    g = [rand(*s, seed=i) for i, s in enumerate([(2, 4), (4, 3), (4, 3), (4, 3), (3, 5), (5, 3), (5, 3)])]
    tri = tnsim.network_from_spec("oh,hi,hj,hk->o", *g[:4], inputs="i,j,k")  # R^3 -> R^2
    bil = tnsim.network_from_spec("ah,hi,hj->a", *g[4:], inputs="i,j")  # R^3 -> R^3
    T_tri = np.einsum("oh,hi,hj,hk->oijk", *[x.numpy() for x in g[:4]])
    T_bil = np.einsum("ah,hi,hj->aij", *[x.numpy() for x in g[4:]])
    proj = rand(2, 3, seed=9)
    lin = tnsim.network_from_spec("oi->o", proj, inputs="i")  # R^3 -> R^2
    other = trilinear(5, bias=True)
    To = bs.trilinear_tensor(other)

    # composition: bil2(bil(x)), degree 4, against a two-layer module
    bil2 = tnsim.network_from_spec("oh,hi,hj->o", g[0], g[1], g[2], inputs="i,j")  # R^3 -> R^2
    T_bil2 = np.einsum("oh,hi,hj->oij", *[x.numpy() for x in g[:3]])
    comp = tnsim.compose(bil2, bil)
    Tc = brute.compose_tensors(_padded(T_bil2, 2), _padded(T_bil, 2))
    torch.manual_seed(6)
    two = torch.nn.Sequential(tnsim.nn.Bilinear(3, 4, 3, bias=True), tnsim.nn.Bilinear(3, 4, 2)).double()
    Tt = brute.model_tensor(two)
    assert rel(tnsim.inner(comp, two, measure="tensor", method="exact"), brute.tensor_inner(Tc, Tt)) < RTOL
    assert rel(tnsim.inner(comp, two, method="exact"), brute.gaussian_inner(Tc, Tt)) < RTOL
    assert len(comp.chain) == 2  # composition keeps the layers for the recursive method
    got = tnsim.inner(comp, two, measure="tensor", method="recursive")
    assert rel(got, brute.hierarchical_inner(Tc, Tt, depth=2)) < RTOL
    # sum of degrees 3 and 1 (a residual-like mixture)
    mix = tnsim.add(tri, lin)
    Tm = _padded(T_tri, 3) + _padded(proj.numpy(), 3, constant=False)
    assert rel(tnsim.inner(mix, other, measure="tensor", method="exact"), brute.tensor_inner(Tm, To)) < RTOL
    assert rel(tnsim.inner(mix, other, method="exact"), brute.gaussian_inner(Tm, To)) < RTOL
    # concatenated outputs: (tri(x), lin(x)) in R^4
    cat = tnsim.concat(tri, lin)
    T_cat = np.concatenate([_padded(T_tri, 3), _padded(proj.numpy(), 3, constant=False)[1:]])
    T_cat2 = np.concatenate([To, To[1:]])
    other2 = tnsim.concat(tnsim.compile(other), tnsim.compile(other))
    assert cat.real_out_shape == (4,)
    assert rel(tnsim.inner(cat, other2, measure="tensor", method="exact"), brute.tensor_inner(T_cat, T_cat2)) < RTOL
    assert rel(tnsim.inner(cat, other2, method="exact"), brute.gaussian_inner(T_cat, T_cat2)) < RTOL
    # scaling
    assert rel(tnsim.inner(tri.scaled(-2.5), other, method="exact"), -2.5 * tnsim.inner(tri, other, method="exact")) < RTOL


def test_trilinear_invariant_to_its_symmetries():
    """Hidden-unit permutation, per-unit rescaling of the three factors (product 1) and
    permutation of the factors leave every similarity at 1 and to a third model unchanged."""
    a, c = trilinear(1, bias=True), trilinear(2, bias=True)
    a2 = trilinear(1, bias=True)
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(4, generator=g)
    s1, s2 = torch.rand(4, generator=g, dtype=torch.float64) + 0.5, -(torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
    scales = [s1, s2, 1 / (s1 * s2)]
    with torch.no_grad():
        lins = [a.a, a.b, a.c]
        for new, old, sc in zip([a2.b, a2.c, a2.a], lins, scales):  # factors rotated
            new.weight.copy_((old.weight * sc[:, None])[perm])
            new.bias.copy_((old.bias * sc)[perm])
        a2.down.weight.copy_(a.down.weight[:, perm])
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(a(x), a2(x), atol=1e-12)
    for measure in ("tensor", "gaussian"):
        for method in ("exact", "recursive"):
            assert abs(tnsim.similarity(a, a2, measure=measure, method=method) - 1) < 1e-9
            v1 = tnsim.similarity(a, c, measure=measure, method=method)
            v2 = tnsim.similarity(a2, c, measure=measure, method=method)
            assert abs(v1 - v2) < 1e-9 and abs(v1) < 1 - 1e-6


def test_terms_store_detached_weights():
    w = torch.randn(3, 4, requires_grad=True)
    t = tnsim.Term(inds=(("o", "i"),), arrays=(w,), copies=(("i",),), outputs=("o",))
    assert not t.arrays[0].requires_grad and t.arrays[0].data_ptr() == w.data_ptr()
