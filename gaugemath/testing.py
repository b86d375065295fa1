"""Hypothesis strategies and assertions for your own test suite.

Strategies draw random catalogue gauges (random widths), parameters, inputs and group
elements; assertions check the facts a gauge-aware model or optimizer must satisfy, with
error messages that name the gauge, the block and the size of the violation.

For a torch model and optimizer of your own, :func:`binding_elements`, :func:`assert_model_invariant` and
:func:`assert_optimizer_equivariant` (from :mod:`gaugemath.model_testing`) take the model and its
``bind()`` ing; see docs/testing.md. For the catalogue's reference layers over flat parameter vectors:

Example (a test in *your* suite; ``my_step`` is one step of your optimizer)::

    from hypothesis import given, settings
    import gaugemath.testing as gt

    rescale = gt.numeric_gauge("relu_rescale", d_in=3, hidden=4, d_out=2)

    @settings(max_examples=25, deadline=None)
    @given(data=gt.problems(rescale))
    def test_my_layer_is_rescale_invariant(data):
        gt.assert_invariant(lambda th: rescale.loss(th, data.inputs, data.targets),
                            rescale, data.theta, data.g)

    @given(data=gt.problems(rescale))
    def test_my_optimizer_is_equivariant(data):
        gt.assert_equivariant(lambda th: my_step(th, data), rescale, data.theta, data.g)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from hypothesis import strategies as st

from .catalogue import gauge as build_gauge
from .errors import GaugeError
from .groups import POSITIVE
from .model_testing import (  # noqa: F401  (your torch model and optimizer: see that module)
    apply_gauge,
    assert_gd_charge_law,
    assert_model_invariant,
    assert_optimizer_equivariant,
    binding_elements,
    describe_element,
    transform_gradient,
)
from .numeric import GroupSample, NumericGauge

__all__ = [
    "GroupSample",
    "Problem",
    "apply_gauge",
    "assert_gd_charge_law",
    "assert_model_invariant",
    "assert_optimizer_equivariant",
    "binding_elements",
    "describe_element",
    "transform_gradient",
    "assert_charges_conserved",
    "assert_equivariant",
    "assert_frame_equivariant",
    "assert_invariant",
    "assert_projector_identities",
    "catalogue_gauges",
    "group_elements",
    "numeric_gauge",
    "parameters",
    "problems",
]


@lru_cache(maxsize=64)
def _cached(name: str, options: tuple, backend: str) -> NumericGauge:
    return NumericGauge(build_gauge(name, **dict(options)), backend)


def numeric_gauge(name: str, backend: str = "numpy", **options) -> NumericGauge:
    """A compiled catalogue gauge (cached per ``name``, options and backend)."""
    return _cached(name, tuple(sorted(options.items())), backend)


#: Catalogue constructions with the width options a strategy may vary.
_WIDTHS = {
    "ce_shift": lambda w: {"vocab": w[0] + 1, "d": w[1]},
    "relu_rescale": lambda w: {"d_in": w[0], "hidden": w[1], "d_out": w[2]},
    "swiglu_rescale": lambda w: {"d_in": w[0], "hidden": w[1], "d_out": w[2]},
    "norm_scale": lambda w: {"kind": ("layernorm", "rmsnorm")[w[0] % 2], "d": w[1] + 1, "d_out": w[2]},
    # w[2] = 1: one RoPE head; 2: two heads, no RoPE, O(d_head) each; 3: two RoPE heads
    "head_rotation": lambda w: (
        {"rope": False, "d_model": w[0], "d_head": max(2, min(w[1] + 1, 2 * w[0])), "heads": 2}
        if w[2] == 2 else {"rope": True, "d_model": w[0], "d_head": 2 * min(w[1], 2), "positions": 2,
                           "heads": 1 if w[2] == 1 else 2}),
}


def catalogue_gauges(names=tuple(_WIDTHS), max_width: int = 3) -> st.SearchStrategy[NumericGauge]:
    """Catalogue gauges with random widths in ``1..max_width`` (compiled, numpy backend)."""
    widths = st.tuples(*[st.integers(1, max_width)] * 3)
    return st.builds(lambda name, w: numeric_gauge(name, **_WIDTHS[name](w)), st.sampled_from(list(names)), widths)


def _floats(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)


def parameters(gauge: NumericGauge, scale: float = 2.0, min_abs: float = 0.05) -> st.SearchStrategy[np.ndarray]:
    """Flat parameter vectors ``θ`` (length ``n``), entries in ``±[min_abs, scale]``.

    Entries are kept away from zero so that orbits are non-degenerate and ReLU kinks and
    norm singularities are avoided (both are null sets).
    """
    entry = st.tuples(st.booleans(), _floats(min_abs, scale)).map(lambda t: t[1] if t[0] else -t[1])
    return st.lists(entry, min_size=gauge.n, max_size=gauge.n).map(lambda v: np.asarray(v, dtype=np.float64))


def group_elements(gauge: NumericGauge, spread: float = 3.0, components: bool = True) -> st.SearchStrategy:
    """Group elements: positive parameters in ``[1/spread, spread]``, real ones in ``±spread``,
    and (if ``components``) any connected component."""
    values = st.tuples(*[(_floats(1 / spread, spread) if k == POSITIVE else _floats(-spread, spread))
                         for k in gauge.group_kinds])
    group = getattr(gauge.gauge, "group", None)  # composed gauges have no component representatives
    n_comp = len(group.components) if group is not None else 0
    comp = st.integers(0, n_comp) if (components and n_comp) else st.just(0)
    return st.builds(lambda v, c: GroupSample(tuple(v), c), values, comp)


@dataclass(frozen=True)
class Problem:
    """One random instance: parameters, a group element, layer inputs and regression targets."""

    theta: np.ndarray
    g: GroupSample
    inputs: dict[str, np.ndarray]
    targets: tuple[float, ...]

    def __repr__(self) -> str:  # what a shrunk counterexample shows: θ and g (inputs and targets are fixed noise)
        return f"Problem(theta={np.array2string(np.asarray(self.theta), precision=3)}, g={self.g!r})"


def problems(gauge: NumericGauge) -> st.SearchStrategy[Problem]:
    """Random :class:`Problem` instances for ``gauge``'s reference layer."""

    def inputs_strategy():
        parts = {}
        for name, (r, c) in gauge.input_shapes.items():
            parts[name] = st.lists(_floats(-1.5, 1.5), min_size=r * c, max_size=r * c).map(
                lambda v, r=r, c=c: np.asarray(v).reshape(r, c))
        return st.fixed_dictionaries(parts).map(gauge.complete_inputs)

    targets = st.tuples(*[_floats(-1, 1)] * gauge.n_targets)
    return st.builds(Problem, parameters(gauge), group_elements(gauge), inputs_strategy(), targets)


# ------------------------------------------------------------------------ assertions
def _scale(*arrays) -> float:
    return max(1.0, *(float(np.max(np.abs(np.asarray(a, dtype=np.float64)))) for a in arrays))


def _fail(gauge: NumericGauge, what: str, err: float, tol: float, block: str | None = None) -> None:
    raise AssertionError(str(GaugeError(gauge.gauge.name, block, f"{what}: error {err:.3e} > tolerance {tol:.1e}")))


def _worst_block(gauge: NumericGauge, diff) -> str:
    blocks = gauge.unflatten(np.abs(np.asarray(diff, dtype=np.float64)))
    return max(blocks, key=lambda b: float(np.max(blocks[b])) if blocks[b].size else 0.0)


def assert_invariant(loss: Callable[[np.ndarray], float], gauge: NumericGauge, theta, g: GroupSample,
                     rtol: float = 1e-9) -> None:
    """``loss(g·θ) == loss(θ)`` up to ``rtol`` (relative to ``max(1, |loss|)``)."""
    a, b = float(loss(theta)), float(loss(gauge.act_flat(g, theta)))
    err = abs(a - b) / max(1.0, abs(a))
    if not err <= rtol:
        _fail(gauge, f"loss not invariant (loss(θ) = {a!r}, loss(g·θ) = {b!r})", err, rtol)


def assert_equivariant(step: Callable[[np.ndarray], np.ndarray], gauge: NumericGauge, theta, g: GroupSample,
                       rtol: float = 1e-8) -> None:
    """An update rule commutes with the gauge: ``step(g·θ) == g·step(θ)``.

    ``step`` maps a flat parameter vector to the updated one (it computes its own gradient
    at the point it is given, e.g. one optimizer step on a gauge-invariant loss).
    """
    lhs = np.asarray(step(gauge.act_flat(g, theta)), dtype=np.float64)
    rhs = gauge.act_flat(g, np.asarray(step(theta), dtype=np.float64))
    err = float(np.max(np.abs(lhs - rhs))) / _scale(lhs, rhs)
    if not err <= rtol:
        _fail(gauge, "update not equivariant: step(g·θ) != g·step(θ)", err, rtol, _worst_block(gauge, lhs - rhs))


def assert_frame_equivariant(gauge: NumericGauge, theta, g: GroupSample, rtol: float = 1e-9) -> None:
    """``h(g·θ) == h(θ) g⁻¹`` and the canonical point is invariant, for ``g`` in the identity
    component (a continuous frame cannot follow a discrete sign flip or reflection)."""
    if g.component:
        raise ValueError(f"gauge '{gauge.gauge.name}': frames are equivariant on the identity component only; "
                         f"got component {g.component}")
    moved = gauge.act_flat(g, theta)
    for h_moved, h, gm in zip(gauge.frame(moved), gauge.frame(theta), gauge.group_matrices(g), strict=True):
        err = float(np.max(np.abs(h_moved - h @ np.linalg.inv(gm)))) / _scale(h)
        if not err <= rtol:
            _fail(gauge, "frame not equivariant: h(g·θ) != h(θ) g⁻¹", err, rtol)
    c, c_moved = gauge.canonical(theta), gauge.canonical(moved)
    err = float(np.max(np.abs(c - c_moved))) / _scale(c)
    if not err <= rtol:
        _fail(gauge, "canonical point not invariant", err, rtol, _worst_block(gauge, c - c_moved))


def assert_projector_identities(gauge: NumericGauge, theta, g: GroupSample | None = None,
                                rtol: float = 1e-8) -> None:
    """``P_V² = P_V``, ``G P_V`` symmetric, ``P_V X = X`` and, given ``g``, ``D P_V(θ) = P_V(g·θ) D``."""
    p, gm, x = gauge.vertical_projector(theta), gauge.metric(theta), gauge.generators(theta)
    checks = [("P_V² != P_V", p @ p - p), ("G P_V not symmetric", gm @ p - (gm @ p).T), ("P_V X != X", p @ x - x)]
    if g is not None:
        d = gauge.linear_part(g)
        checks.append(("P_V not equivariant", d @ p - gauge.vertical_projector(gauge.act_flat(g, theta)) @ d))
    for what, r in checks:
        err = float(np.max(np.abs(r))) / _scale(p, gm)
        if not err <= rtol:
            _fail(gauge, what, err, rtol)


def assert_charges_conserved(gauge: NumericGauge, before, after, atol: float) -> None:
    """Every derived Noether charge agrees between ``before`` and ``after`` to ``atol``."""
    q0, q1 = gauge.charges(before), gauge.charges(after)
    for c, a, b in zip(gauge.gauge.charges, q0, q1, strict=True):
        if not abs(float(a) - float(b)) <= atol:
            _fail(gauge, f"charge Q[{c.label}] drifted from {float(a)!r} to {float(b)!r}", abs(float(a) - float(b)),
                  atol)
