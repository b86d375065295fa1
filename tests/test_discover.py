"""Discovery of gauges (issue 8): known algebras of new layers, exactness, completeness, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

import gaugemath
from gaugemath import GaugeError
from gaugemath.discovery import backend, declare, discover, layer, relu, relu2, silu, softmax
from gaugemath.discovery.sampling import sample_gradients
from gaugemath.discovery.search import sparsify


def _m(name, r, c=1):
    return sp.MatrixSymbol(name, r, c)


def deep_linear(d_in=2, h=2, d_out=2):
    """``y = W2 W1 x``: GL(h) acts by ``(M W1, W2 M⁻¹)``."""
    return layer("deep_linear", [_m("W1", h, d_in), _m("W2", d_out, h)], [_m("x", d_in)],
                 _m("W2", d_out, h) * _m("W1", h, d_in) * _m("x", d_in), widths=dict(d_in=d_in, h=h, d_out=d_out))


def relu2_mlp(d_in=2, hidden=2, d_out=2):
    """``y = W_out relu2(W_in x)``: degree-2 homogeneous, ``(α W_in[k], W_out[:, k]/α²)``."""
    w_in, w_out = _m("W_in", hidden, d_in), _m("W_out", d_out, hidden)
    return layer("relu2_mlp", [w_in, w_out], [_m("x", d_in)], w_out * relu2(w_in * _m("x", d_in)),
                 widths=dict(d_in=d_in, hidden=hidden, d_out=d_out))


def value_output(d_model=2, heads=2, d_head=2, positions=2):
    """Attention output ``Σ_h W_O^h Σ_n a_hmn W_V^h x_n`` with fixed attention weights: GL(d_head) per head."""
    w_v, w_o = _m("W_V", heads * d_head, d_model), _m("W_O", d_model, heads * d_head)
    xs = [_m(f"x{n}", d_model) for n in range(positions)]
    att = [[[sp.Symbol(f"a{h}_{m}_{n}") for n in range(positions)] for m in range(positions)] for h in range(heads)]
    outs = []
    for m in range(positions):
        y = sp.zeros(d_model, 1)
        for h in range(heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            ctx = sum((att[h][m][n] * (w_v.as_explicit()[rows, :] * xs[n].as_explicit()) for n in range(positions)),
                      sp.zeros(d_head, 1))
            y += w_o.as_explicit()[:, rows] * ctx
        outs += list(y)
    weights = {s: 0 for h in att for row in h for s in row}
    return layer("value_output", [w_v, w_o], xs, outs, constants={s: 0.3 + 0.1 * i for i, s in enumerate(weights)},
                 widths=dict(d_model=d_model, heads=heads, d_head=d_head))


def gqa_scores(d_model=2, q_heads=2, d_head=2):
    """Grouped-query scores: two query heads share one key head, ``s_h = (W_Q^h x_q)ᵀ (W_K x_k)``."""
    w_q, w_k = _m("W_Q", q_heads * d_head, d_model), _m("W_K", d_head, d_model)
    xq, xk = _m("xq", d_model).as_explicit(), _m("xk", d_model).as_explicit()
    k = w_k.as_explicit() * xk
    outs = [(w_q.as_explicit()[h * d_head:(h + 1) * d_head, :] * xq).dot(k) for h in range(q_heads)]
    return layer("gqa", [w_q, w_k], [_m("xq", d_model), _m("xk", d_model)], outs)


# ------------------------------------------------------------------------------------ known algebras
def test_deep_linear_gl_h_general_form():
    alg = discover(deep_linear, widths=[dict(h=2), dict(h=3)])
    assert [a.dim for a in alg.instances] == [4, 9] and all(a.complete for a in alg.instances)
    assert str(alg.general.dim_formula) == "h**2"
    # gl(h) is not abelian: [E_01, E_10] = E_00 − E_11 (as fields, up to the anti-homomorphism sign)
    assert not alg.abelian and alg.orbit_dim() == 4
    assert not alg.charges or all(c.M == c.M.T for c in alg.charges)
    with pytest.raises(GaugeError, match="no canonical frame"):
        alg.to_gauge()
    # the diagonal (per-unit) part is a frameable torus: (W1[k]·α, W2[:, k]/α)
    torus = alg.frameable()
    assert torus.dim == 2 and torus.families[0].describe() == "scale: W1[k, :]·α, W2[:, k]·α^-1"


def test_relu2_degree_two_rescale():
    alg = discover(relu2_mlp)
    assert alg.dim == 2 and alg.complete
    assert alg.families[0].describe() == "scale: W_in[k, :]·α, W_out[:, k]·α^-2"
    q = alg.charges[0].expr  # ∇Q = 2X with X = (W_in[0], −2 W_out[:, 0]): ‖W_in[0]‖² − 2‖W_out[:, 0]‖²
    w_in = sp.Symbol("W_in[0,0]", real=True)
    w_out = sp.Symbol("W_out[0,0]", real=True)
    assert sp.diff(q, w_out, 2) == -2 * sp.diff(q, w_in, 2)
    cert = gaugemath.prove(alg.to_gauge())
    assert cert.passed, cert.failures()
    with pytest.raises(GaugeError, match="exponent"):
        backend.render(alg)


def test_value_output_gl_dhead_per_head():
    alg = discover(value_output)
    assert alg.dim == 8 and alg.complete  # gl(2) per head, 2 heads
    br = alg.brackets()
    touched = {b for gen in alg.generators for b in gen}
    assert touched == {"W_V", "W_O"} and br
    # no bracket mixes the two heads: per-head blocks commute
    heads = {}
    for lab, gen in zip(alg.labels, alg.generators):
        rows = {i // 2 for i in range(4) if any(gen.get("W_V", sp.zeros(4, 2)).row(i))}
        heads[lab] = rows
    for (a, b), cs in br.items():
        assert heads[a] == heads[b] and all(heads[c] == heads[a] for c in cs)


def test_grouped_query_attention_shares_one_gl():
    alg = discover(gqa_scores)
    # (W_Q^h → M W_Q^h for both query heads, W_K → M^{-T} W_K): one gl(d_head), not one per query head
    assert alg.dim == 4 and alg.complete


def test_silu_and_softmax_layers():
    w, x = _m("W", 2, 2), _m("x", 2)
    assert discover(layer("silu", [w], [x], silu(w * x))).dim == 0  # silu has no scaling property
    head_w, head_b, x1 = _m("H", 2, 1), _m("c", 2), _m("x", 1)
    alg = discover(layer("softmax", [head_w, head_b], [x1], softmax(head_w * x1 + head_b)))
    # the shifts W + 1v, b + c1, and their field-dependent multiples ℓ(θ)·shift: same orbits
    assert alg.complete and alg.orbit_dim() == 2 and alg.reduced().dim == 2
    assert {f.kind for f in alg.reduced().families} == {"shift"}


def test_every_returned_generator_is_proved_exactly():
    alg = discover(relu2_mlp(hidden=3))
    assert alg.dim == len(alg.proofs) == 3
    assert all(r == 0 for p in alg.proofs for r in p.residuals)


def test_unprovable_candidate_is_never_returned(monkeypatch):
    """A numeric direction that the exact proof rejects is dropped and the algebra is marked incomplete."""
    from gaugemath.discovery import algebra as mod
    from gaugemath.discovery.search import Candidate

    real = mod.null_space

    def corrupted(lay, seed=0):
        ns = real(lay, seed)
        bad = ns.candidates[0]
        wrong = Candidate(bad.A * 0 + sp.diag(*([1] + [0] * (bad.A.rows - 1))), bad.b)  # scale one entry only
        return type(ns)(ns.dim, [*ns.candidates[1:], wrong], ns.unrounded, ns.singular_gap, ns.equations,
                        ns.unknowns, ns.dropped_points)

    monkeypatch.setattr(mod, "null_space", corrupted)
    alg = discover(relu2_mlp)
    assert alg.dim == 1 and len(alg.rejected) == 1 and not alg.complete
    assert any(r != 0 for r in alg.rejected[0].residuals)


# ------------------------------------------------------------------------------------ numerics
@given(st.integers(0, 2**16))
def test_sampled_gradients_match_finite_differences(seed):
    lay = relu2_mlp()
    s = sample_gradients(lay, 3, np.random.default_rng(seed))
    f = sp.lambdify([lay.coordinates, lay.input_symbols], list(lay.outputs),
                    modules=[{"Relu2": lambda z: max(z, 0.0) ** 2}, "math"])
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((3, len(lay.coordinates)))
    xs = {sym: rng.standard_normal(3) for sym in lay.input_symbols}
    assert np.allclose(theta, s.theta)
    p, h = 0, 1e-6
    x0 = [xs[sym][p] for sym in lay.input_symbols]
    for i in range(len(lay.coordinates)):
        up, dn = theta[p].copy(), theta[p].copy()
        up[i] += h
        dn[i] -= h
        fd = (np.array(f(up, x0)) - np.array(f(dn, x0))) / (2 * h)
        assert np.allclose(fd, s.grads[p, :, i], atol=1e-5)


def test_ambiguous_numerical_rank_is_refused(monkeypatch):
    """A threshold inside the spectrum (no clear gap) is an error, not a guess."""
    from gaugemath.discovery import search

    monkeypatch.setattr(search, "RANK_TOL", 0.05)
    with pytest.raises(GaugeError, match="numerical rank is ambiguous"):
        discover(relu2_mlp)


@given(st.lists(st.lists(st.integers(-3, 3), min_size=6, max_size=6), min_size=1, max_size=4))
def test_sparsify_keeps_the_span(rows):
    from fractions import Fraction

    vecs = [{i: Fraction(c) for i, c in enumerate(r) if c} for r in rows]
    out = sparsify(vecs)
    as_matrix = lambda vs: sp.Matrix([[v.get(i, 0) for i in range(6)] for v in vs])  # noqa: E731
    assert as_matrix(out).rank() == as_matrix(vecs).rank() == as_matrix(vecs + out).rank()
    assert sum(map(len, out)) <= sum(map(len, vecs))


# ------------------------------------------------------------------------------------ bad input
def test_undeclared_function_is_refused_with_what_to_declare():
    f = sp.Function("swish")
    w, x = _m("W", 2, 2), _m("x", 2)
    with pytest.raises(GaugeError, match=r"function 'swish' is not declared.*declare\('swish'"):
        layer("bad", [w], [x], (w * x).applyfunc(f))


def test_nonpolynomial_and_undifferentiable_dependence_is_refused():
    w, x = _m("W", 2, 2), _m("x", 2)
    wx = (w * x).as_explicit()
    with pytest.raises(GaugeError, match="parameter in an exponent"):
        layer("bad", [w], [x], [x.as_explicit()[0] ** wx[0]])
    with pytest.raises(GaugeError, match="'Abs'.*declare"):
        layer("bad", [w], [x], wx.applyfunc(sp.Abs))


def test_inconsistent_shapes_and_stray_symbols_are_refused():
    w, x = _m("W", 2, 3), _m("x", 2)
    with pytest.raises(sp.ShapeError):
        w * x  # SymPy refuses the product itself
    with pytest.raises(GaugeError, match="symbol 'z' is neither"):
        layer("bad", [w], [_m("x", 3)], [sp.Symbol("z") * (w * _m("x", 3)).as_explicit()[0]])
    with pytest.raises(GaugeError, match="does not appear in the outputs"):
        layer("bad", [w, _m("V", 2, 2)], [_m("x", 3)], w * _m("x", 3))
    with pytest.raises(GaugeError, match="symbolic"):
        layer("bad", [sp.MatrixSymbol("W", sp.Symbol("n"), 2)], [_m("x", 2)], [sp.S.One])


def test_declared_homogeneous_function_rescales():
    leaky = declare("leaky_t", value=lambda z: np.where(z > 0, z, 0.1 * z),
                    derivative=lambda z: np.where(z > 0, 1.0, 0.1), degree=1)
    w1, w2, x = _m("W1", 2, 2), _m("W2", 1, 2), _m("x", 2)
    alg = discover(layer("leaky_mlp", [w1, w2], [x], w2 * leaky(w1 * x)))
    assert alg.dim == 2 and alg.complete
    opaque = declare("opaque_t", value=np.tanh, derivative=lambda z: 1 - np.tanh(z) ** 2)
    assert discover(layer("opaque", [w1, w2], [x], w2 * opaque(w1 * x))).dim == 0


def test_relu_sign_flip_is_not_a_symmetry():
    """The ReLU rescale is positive only: α = −1 changes the output (Euler's identity is not an evenness)."""
    alg = discover(layer("mlp", [_m("W1", 2, 2), _m("W2", 1, 2)], [_m("x", 2)],
                         _m("W2", 1, 2) * relu(_m("W1", 2, 2) * _m("x", 2))))
    g = alg.to_gauge()
    assert g.group.name.startswith("R_{>0}") and not g.group.components


@pytest.mark.parametrize("kind", ["leaky (degree 1)", "softplus (opaque)"])
def test_declared_functions_evaluate_to_what_they_declare_against_torch(kind):
    """A declared function's value and derivative in NumericGauge are the declared ones (issue 20: a
    degree-1 declaration evaluated as max(z, 0) and its gradient raised NameError), checked against torch's
    own leaky_relu / softplus through a two-layer layer, at points with negative pre-activations."""
    import numpy as np
    import sympy as sp
    import torch

    from gaugemath.discovery import declare, discover, layer
    from gaugemath.numeric import NumericGauge

    if kind.startswith("leaky"):
        f = declare("leaky", value=lambda z: np.where(z > 0, z, 0.1 * z),
                    derivative=lambda z: np.where(z > 0, 1.0, 0.1), degree=1)
        ref = lambda z: torch.nn.functional.leaky_relu(z, 0.1)  # noqa: E731
    else:
        f = declare("softplus", value=lambda z: np.log1p(np.exp(z)), derivative=lambda z: 1 / (1 + np.exp(-z)))
        ref = torch.nn.functional.softplus
    from gaugemath.discovery import relu

    w1, w2, x = sp.MatrixSymbol("W1", 2, 2), sp.MatrixSymbol("W2", 1, 2), sp.MatrixSymbol("x", 2, 1)
    # the function under test on the output of a ReLU unit pair (so there is a gauge to build, on both blocks)
    num = NumericGauge(discover(layer("declared_mlp", [w1, w2], [x], f(w2 * relu(w1 * x)))).to_gauge())
    rng = np.random.default_rng(0)
    for _ in range(3):
        theta, xs, y = rng.normal(size=6), rng.normal(size=(2, 1)), rng.normal()
        a, b = torch.tensor(theta[:4].reshape(2, 2), requires_grad=True), torch.tensor(theta[4:].reshape(1, 2),
                                                                                     requires_grad=True)
        out = ref(b @ torch.relu(a @ torch.tensor(xs)))
        ((out - y) ** 2 / 2).sum().backward()
        want = np.concatenate([a.grad.numpy().ravel(), b.grad.numpy().ravel()])
        assert np.allclose(num.outputs(theta, {"x": xs}), out.detach().numpy().ravel(), rtol=1e-12, atol=1e-14)
        assert np.allclose(num.gradient(theta, {"x": xs}, (y,)), want, rtol=1e-10, atol=1e-12)
