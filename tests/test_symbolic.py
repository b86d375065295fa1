"""The symbolic core: catalogue, derivations, theory oracles (theory.md §4.1 E7) and bad input."""

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

import gaugemath
from gaugemath import GaugeError, ProofError
from gaugemath.catalogue import head_rotation, relu_rescale, rope_commutant, swiglu_rescale
from gaugemath.gauge import Gauge, ReferenceModel, block_symbols
from gaugemath.groups import orthogonal, positive_scalings
from gaugemath.proofs import prove

FIVE = ("ce_shift", "relu_rescale", "swiglu_rescale", "norm_scale", "head_rotation")


def test_catalogue_lists_the_five_gauges_and_the_block():
    names = gaugemath.gauges().names()
    assert all(n in names for n in FIVE)
    assert "transformer_block" in names
    assert all(n in repr(gaugemath.gauges()) for n in FIVE)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_relu_charge_is_the_per_unit_norm_imbalance(d_in, hidden, d_out):
    g = relu_rescale(d_in, hidden, d_out)
    w_in, b_in, w_out = (g.blocks[b] for b in ("W_in", "b_in", "W_out"))
    expected = [sum(w_in[k, j] ** 2 for j in range(d_in)) + b_in[k] ** 2 - sum(w_out[i, k] ** 2 for i in range(d_out))
                for k in range(hidden)]
    assert [sp.expand(c.expr) for c in g.charges] == [sp.expand(e) for e in expected]


def test_swiglu_charge_excludes_the_gate():
    g = swiglu_rescale(2, 2, 2)
    for c in g.charges:
        assert not any(str(s).startswith("W_gate") for s in c.expr.free_symbols)
        assert any(str(s).startswith("W_up") for s in c.expr.free_symbols)


def _numeric_rank(gauge, seed=0):
    rng = np.random.default_rng(seed)
    point = {s: sp.Rational(int(rng.integers(-50, 50)) or 1, int(rng.integers(1, 7))) for s in gauge.coordinates}
    return gauge.generators.subs(point).rank()


@pytest.mark.parametrize("d_in,hidden,d_out", [(3, 8, 2), (1, 4, 1), (2, 5, 3)])
def test_E7_rescale_orbit_dimension_is_h(d_in, hidden, d_out):
    # theory.md §6.3 erratum: generic dense weights give h, not min(h, max(n, m)).
    assert _numeric_rank(relu_rescale(d_in, hidden, d_out)) == hidden
    printed = min(hidden, max(d_in, d_out))
    if hidden > max(d_in, d_out):
        assert printed != hidden


@pytest.mark.parametrize("h,d_model,heads", [(6, 1, 1), (5, 1, 1), (4, 2, 1), (3, 1, 1), (4, 1, 2)])
def test_E7_orthogonal_orbit_dimension_follows_the_erratum(h, d_model, heads):
    # O(h) on (W_Q, W_K) is the two-layer O(h) gauge with n = m = d_model (theory.md §6.3):
    # rank = C(h,2) - C((h - n - m)_+, 2), not the printed C(h,2) - C(h - max(n,m), 2); heads add up.
    gauge = head_rotation(False, d_model=d_model, d_head=h, heads=heads)
    expected = heads * (math.comb(h, 2) - math.comb(max(h - 2 * d_model, 0), 2))
    assert _numeric_rank(gauge) == expected
    printed = math.comb(h, 2) - math.comb(max(h - d_model, 0), 2)
    if h - d_model >= 2:
        assert printed != expected


@pytest.mark.parametrize("d_head", [2, 4, 6])
def test_rope_commutant_is_one_rotation_per_plane(d_head):
    basis = rope_commutant(d_head)
    assert len(basis) == d_head // 2
    for m in basis:
        assert m == -m.T


def test_so3_structure_constants_are_derived_and_antisymmetric():
    sc = orthogonal(3).structure_constants()
    assert len(sc) == 3 and all(any(v != 0 for v in vals) for vals in sc.values())
    g = head_rotation(False)
    fb = g.field_brackets
    for key, vals in fb.items():  # ξ ↦ X_ξ is an anti-homomorphism for a left action
        assert tuple(-v for v in sc[key]) == vals


def test_composed_block_has_overlapping_gauges_and_noncommuting_brackets():
    block = gaugemath.transformer_block()
    factors = {f.name for f in block.factors}
    assert {"ln1_gain", "head_rotation", "ce_shift"} <= factors
    touched = {}
    for f in block.factors:
        for b in f.blocks:
            touched.setdefault(b, []).append(f.name)
    assert any(len(v) > 1 for v in touched.values())  # several gauges act on one matrix
    assert any(any(v) for v in block.field_brackets.values())


# ---------------------------------------------------------------------------- bad input
def test_unknown_gauge_and_bad_options():
    with pytest.raises(KeyError, match="unknown gauge 'nope'"):
        gaugemath.gauge("nope")
    with pytest.raises(ValueError, match="relu_rescale"):
        relu_rescale(frame="sideways")
    with pytest.raises(ValueError, match="head_rotation.*d_head=3 must be even"):
        head_rotation(True, d_head=3)


def test_unknown_block_and_shape_mismatch_name_gauge_and_block():
    g = relu_rescale()
    with pytest.raises(GaugeError, match="gauge 'relu_rescale', block 'W_nope'"):
        g.act(g.group.identity, {**g.blocks, "W_nope": sp.zeros(1, 1)})
    with pytest.raises(GaugeError, match="block 'W_in': shape"):
        g.flatten({**g.blocks, "W_in": sp.zeros(3, 3)})


def test_degenerate_orbit_is_reported():
    g = relu_rescale(1, 1, 1)
    zero = {"W_in": sp.zeros(1, 1), "b_in": sp.zeros(1, 1), "W_out": sp.zeros(1, 1)}
    with pytest.raises(GaugeError, match="degenerate orbit"):
        g.vertical_projector_at(zero)


def test_a_false_gauge_fails_its_proof_with_the_residual():
    # rescaling the SwiGLU *gate* is not a symmetry: silu(c z) != c silu(z)
    w_gate, w_down = block_symbols("W_gate", 1, 1), block_symbols("W_down", 1, 1)
    x, w_up = block_symbols("x", 1), block_symbols("W_up", 1, 1)
    from gaugemath import layers

    def forward(p, inp, stage):
        return list(layers.swiglu_mlp(inp["x"], p["W_gate"], inp["W_up"], p["W_down"], stage))

    model = ReferenceModel("toy SwiGLU", {"x": x, "W_up": w_up}, forward)
    fake = Gauge("gate_rescale", summary="(false) gate rescale", group=positive_scalings(1),
                 blocks={"W_gate": w_gate, "W_down": w_down},
                 action=lambda g, p: {"W_gate": g * p["W_gate"], "W_down": p["W_down"] * g.inv()},
                 frame=lambda p: sp.Matrix([[1]]), frame_name="none", model=model)
    cert = prove(fake)
    assert not cert.passed
    bad = [c for c in cert.failures() if c.kind == "invariance"]
    assert bad and bad[0].residual != 0
    with pytest.raises(ProofError, match="gate_rescale.*residual"):
        cert.raise_on_failure()


def test_backends_ship_inside_the_package():
    import gaugemath.backends

    assert "generated" in (gaugemath.backends.__doc__ or "").lower()


def test_o_d_frame_refuses_a_degenerate_orbit():
    g = head_rotation(False, d_model=1, d_head=3)
    with pytest.raises(GaugeError, match="head_rotation.*2·d_model >= d_head"):
        g.frame(g.blocks)


@pytest.mark.parametrize("rope", [True, False])
def test_two_heads_rotate_independently_and_prove(rope):
    g = head_rotation(rope, d_model=2, d_head=2, heads=2)
    assert g.dim == 2  # one SO(2) plane / one so(2) per head
    assert all(b.is_zero_matrix or b[:2, :2].is_zero_matrix or b[2:, 2:].is_zero_matrix for b in g.group.basis)
    cert = prove(g)
    assert cert.passed, [(c.statement, c.residual) for c in cert.failures()]
