"""Code generation: the printer and the recognition-plus-proof of orbit families."""

import pytest
import sympy as sp

from gaugemath import GaugeError, catalogue
from gaugemath.codegen import _scale_family, derive_family_specs, render
from gaugemath.printing import ArrayPrinter, print_array_code


def test_printer_emits_elementwise_code_and_refuses_what_it_cannot_print():
    a, b = sp.symbols("a b", positive=True)
    assert print_array_code(sp.sqrt(a) / b**2 - sp.Rational(1, 3), "torch") == "torch.sqrt(a)/b**2 - (1/3)"
    assert print_array_code(1 / sp.sqrt(a + b), "jax") == "1/jnp.sqrt(a + b)"
    with pytest.raises(ValueError, match="floating constant"):
        print_array_code(a * 0.5, "torch")
    with pytest.raises(ValueError, match="no array translation"):
        print_array_code(sp.exp(a), "torch")
    with pytest.raises(ValueError, match="unknown array library"):
        ArrayPrinter("numpy")


def test_generated_formulas_are_the_derived_ones():
    specs = {s.key: s for s in derive_family_specs()}
    sq_in, sq_b, sq_out = (sp.Symbol(n, positive=True) for n in ("sq_W_in", "sq_b_in", "sq_W_out"))
    bal = specs["relu_rescale.balance"]
    assert sp.simplify(bal.frame[0] - (sq_out / (sq_in + sq_b)) ** sp.Rational(1, 4)) == 0
    assert [(s.role, s.axis, s.exponent) for s in bal.slices] == [("W_in", "rows", 1), ("b_in", "rows", 1),
                                                                    ("W_out", "cols", -1)]
    assert specs["ce_shift.W"].frame == (-sp.Symbol("mean_W", real=True),)
    assert specs["head_rotation.norope"].kind == "head"
    assert "content digest" in render(list(specs.values()), "torch")


def test_a_frame_that_is_not_a_per_unit_pattern_is_refused():
    g = catalogue.relu_rescale(2, 2, 2)
    frame = g._frame
    g._frame = lambda p: sp.diag(*[e * (1 + p["W_in"][0, 0] ** 2) for e in frame(p).diagonal()])  # couples units
    with pytest.raises(GaugeError, match="no statistic reproduces the frame"):
        _scale_family(g, "bad", "test")
