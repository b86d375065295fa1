"""`gaugemath.testing` as a user would use it: the documented example, run for real."""

import numpy as np
import pytest
from hypothesis import given, settings

import gaugemath.testing as gt

rescale = gt.numeric_gauge("relu_rescale", d_in=3, hidden=4, d_out=2)


@settings(max_examples=15)
@given(data=gt.problems(rescale))
def test_documented_example_invariance(data):
    gt.assert_invariant(lambda th: rescale.loss(th, data.inputs, data.targets), rescale, data.theta, data.g)


@settings(max_examples=15)
@given(data=gt.problems(rescale))
def test_documented_example_charges_under_flow_step(data):
    # a tiny GD step changes every charge by η² gᵀMg only (second order)
    eta = 1e-6
    grad = rescale.gradient(data.theta, data.inputs, data.targets)
    gt.assert_charges_conserved(rescale, data.theta, data.theta - eta * grad,
                                atol=4 * eta**2 * max(1.0, float(grad @ grad)))


def test_equivariance_assertion_names_gauge_and_block():
    theta = np.linspace(0.4, 1.6, rescale.n)
    from gaugemath.numeric import GroupSample

    g = GroupSample((2.0, 0.5, 1.5, 0.8))
    with pytest.raises(AssertionError, match=r"gauge 'relu_rescale', block '\w+': update not equivariant"):
        gt.assert_equivariant(lambda th: th - 0.1 * np.sign(th), rescale, theta, g)


def test_frame_assertion_rejects_other_components():
    gauge = gt.numeric_gauge("swiglu_rescale")
    from gaugemath.numeric import GroupSample

    with pytest.raises(ValueError, match="identity component"):
        gt.assert_frame_equivariant(gauge, np.ones(gauge.n), GroupSample((1.0, 1.0), 1))


def test_bad_parameters_get_clear_errors():
    from gaugemath import GaugeError

    with pytest.raises(GaugeError, match="block 'W_in': shape"):
        rescale.flatten({"W_in": np.zeros((2, 2)), "b_in": np.zeros(4), "W_out": np.zeros((2, 4))})
    with pytest.raises(GaugeError, match="block 'W_in': non-finite"):
        rescale.flatten({"W_in": np.full((4, 3), np.nan), "b_in": np.zeros(4), "W_out": np.zeros((2, 4))})
    with pytest.raises(GaugeError, match="degenerate orbit"):
        rescale.vertical_projector(np.zeros(rescale.n))


def test_inputs_and_options_that_would_be_ignored_are_refused():
    from gaugemath import GaugeError, gauge

    shift = gt.numeric_gauge("ce_shift")  # soft targets p with Σ p = 1: p_last is derived
    theta = np.linspace(-1, 1, shift.n)
    ok = {"x": np.array([0.3, -0.2]), "p": np.array([0.2, 0.3, 0.5])}
    shift.loss(theta, ok)
    with pytest.raises(GaugeError, match="gauge 'ce_shift', block 'p': input entry 2"):
        shift.loss(theta, {**ok, "p": np.array([0.2, 0.3, 0.9])})
    with pytest.raises(ValueError, match="norm_scale.*d_out=4 does not apply"):
        gauge("norm_scale", kind="producer", d_out=4)
