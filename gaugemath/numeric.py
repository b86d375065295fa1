"""Numerical evaluation of what the symbolic core derived (NumPy float64 or mpmath).

:class:`NumericGauge` compiles a gauge's derived expressions with :func:`sympy.lambdify`:
the action at a generic group element, the generators ``X(θ)`` (``n×k``), the canonical
point, the invariant metric, the Noether charges, and the reference layer's outputs and
the gradient of a test loss. Nothing here is typed in by hand; the projector is formed
from the compiled ``X`` and ``G`` as ``P_V = X (XᵀGX)⁻¹ XᵀG``.

With ``backend="mpmath"`` every function evaluates in mpmath at ``mpmath.mp.dps`` digits
(50 by default here) and returns ``mpmath.matrix``-free plain lists / object arrays, for
high-precision oracles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import mpmath
import numpy as np
import sympy as sp

from .errors import GaugeError
from .gauge import ComposedGauge, Gauge, GaugeBase

ArrayParams = dict[str, np.ndarray]
BACKENDS = ("numpy", "mpmath")


def _relu_np(z):
    return np.maximum(z, 0.0)


def _relu_mp(z):
    return z if z > 0 else mpmath.mpf(0)


_MODULES = {
    "numpy": [{"Relu": _relu_np, "Relu2": lambda z: _relu_np(z) ** 2}, "numpy"],
    "mpmath": [{"Relu": _relu_mp, "Relu2": lambda z: _relu_mp(z) ** 2}, "mpmath"],
}


def _modules(backend: str) -> list:
    """lambdify's namespace: ReLU, ReLU², and every function declared with ``discovery.declare`` (its
    declared NumPy ``value`` and, for opaque ones, ``derivative``; mpmath: through float64)."""
    from .discovery.functions import NUMERIC

    base, lib = _MODULES[backend]
    extra = dict(NUMERIC) if backend == "numpy" else {
        k: (lambda z, f=f: mpmath.mpf(float(np.asarray(f(np.asarray(float(z))))))) for k, f in NUMERIC.items()}
    return [{**base, **extra}, lib]


@dataclass(frozen=True)
class GroupSample:
    """A numerical group element: values of the generic parameters and a component index.

    ``component = 0`` is the identity component; ``i > 0`` multiplies by the ``i``-th
    component representative (sign flips, reflections) before acting.
    """

    values: tuple[float, ...]
    component: int = 0


class NumericGauge:
    """Compiled numerical view of a :class:`~gaugemath.gauge.Gauge` or composed gauge.

    Parameters are passed as ``{block: array}`` with the reference shapes; flat vectors
    stack the blocks row-major in declaration order (length ``n``).
    """

    def __init__(self, gauge: GaugeBase, backend: str = "numpy", dps: int = 50):
        if backend not in BACKENDS:
            raise ValueError(f"gauge '{gauge.name}': unknown backend {backend!r}; choose from {BACKENDS}")
        self.gauge, self.backend, self.dps = gauge, backend, dps
        self._modules = _modules(backend)
        self._coords = list(gauge.coordinates)
        self.shapes = {b: (m.rows, m.cols) for b, m in gauge.blocks.items()}
        self.n, self.k = len(self._coords), gauge.dim
        g, kinds = gauge.generic_element("g")
        self._group_symbols = list(kinds)
        self.group_kinds = tuple(kinds.values())
        self._generic = g

    # ------------------------------------------------------------------ conversion
    def _array(self, values):
        if self.backend == "numpy":
            return np.asarray(values, dtype=np.float64)
        return np.array([mpmath.mpf(v) if not isinstance(v, mpmath.mpf) else v for v in np.ravel(values)],
                        dtype=object).reshape(np.shape(values))

    def flatten(self, params: ArrayParams) -> np.ndarray:
        """``{block: array} -> θ`` (length ``n``); errors name the block at fault."""
        out = []
        for b, shape in self.shapes.items():
            if b not in params:
                raise GaugeError(self.gauge.name, b, "parameter block missing")
            a = np.asarray(params[b], dtype=object if self.backend == "mpmath" else None)
            if a.ndim == 1 and shape[1] == 1:
                a = a.reshape(shape)
            if a.shape != shape:
                raise GaugeError(self.gauge.name, b, f"shape {a.shape} != expected {shape}")
            if self.backend == "numpy":
                if not np.issubdtype(a.dtype, np.floating):
                    raise GaugeError(self.gauge.name, b, f"unsupported dtype {a.dtype} (expected a float dtype)")
                if not np.all(np.isfinite(a)):
                    raise GaugeError(self.gauge.name, b, "non-finite entries")
            out.extend(a.ravel())
        extra = [b for b in params if b not in self.shapes]
        if extra:
            raise GaugeError(self.gauge.name, extra[0], f"no such block (blocks: {list(self.shapes)})")
        return self._array(out)

    def unflatten(self, theta) -> ArrayParams:
        out, i = {}, 0
        for b, (r, c) in self.shapes.items():
            out[b] = np.asarray(theta[i : i + r * c]).reshape(r, c)
            i += r * c
        return out

    def _lambdify(self, args, expr):
        return sp.lambdify(args, expr, modules=self._modules, cse=True)

    def _call(self, fn, *args):
        if self.backend == "mpmath":
            with mpmath.workdps(self.dps):
                return np.array(fn(*args), dtype=object)
        return np.asarray(fn(*args), dtype=np.float64)

    # -------------------------------------------------------------------- the group
    @cached_property
    def _act_fn(self):
        params = self.gauge.act(self._generic, self.gauge.blocks, simplify=False)
        return self._lambdify([self._group_symbols, self._coords], list(self.gauge.flatten(params)))

    def _component_element(self, sample: GroupSample):
        if sample.component == 0:
            return None
        if not isinstance(self.gauge, Gauge):
            raise GaugeError(self.gauge.name, None, "components are only defined for single-group gauges")
        comps = self.gauge.group.components
        if not 0 < sample.component <= len(comps):
            raise GaugeError(self.gauge.name, None, f"component {sample.component} out of range (0..{len(comps)})")
        return comps[sample.component - 1]

    @cached_property
    def _component_fns(self):
        if not isinstance(self.gauge, Gauge):
            return []
        return [self._lambdify([self._coords], list(self.gauge.flatten(self.gauge.act(c, self.gauge.blocks))))
                for c in self.gauge.group.components]

    def act_flat(self, sample: GroupSample, theta) -> np.ndarray:
        """``g·θ`` for ``g = c·g(values)`` (``c`` the component representative)."""
        if len(sample.values) != len(self._group_symbols):
            raise GaugeError(self.gauge.name, None,
                             f"group element has {len(sample.values)} parameters, expected {len(self._group_symbols)}")
        out = self._call(self._act_fn, self._array(sample.values), theta)
        if sample.component:
            self._component_element(sample)
            out = self._call(self._component_fns[sample.component - 1], out)
        return out

    def act(self, sample: GroupSample, params: ArrayParams) -> ArrayParams:
        return self.unflatten(self.act_flat(sample, self.flatten(params)))

    @cached_property
    def _linear_fn(self):
        d = self.gauge.linear_part(self._generic)
        return self._lambdify([self._group_symbols], d.tolist())

    def linear_part(self, sample: GroupSample) -> np.ndarray:
        """``D(g)`` (``n×n``)."""
        d = self._call(self._linear_fn, self._array(sample.values))
        if sample.component:
            c = self._component_element(sample)
            dc = self.gauge.linear_part(c)
            d = self._array(np.array(dc.tolist(), dtype=object)) @ d
        return d

    # ---------------------------------------------------------------- derived fields
    @cached_property
    def _generators_fn(self):
        return self._lambdify([self._coords], self.gauge.generators.tolist())

    def generators(self, theta) -> np.ndarray:
        """``X(θ)`` (``n×k``): column ``a`` is the orbit tangent of generator ``a``."""
        return self._call(self._generators_fn, theta).reshape(self.n, self.k)

    @cached_property
    def _canonical_fn(self):
        canon = self.gauge.canonical(self.gauge.blocks, simplify=False)
        return self._lambdify([self._coords], list(self.gauge.flatten(canon)))

    def canonical(self, theta) -> np.ndarray:
        """The canonical point ``h(θ)·θ`` (G-invariant)."""
        return self._call(self._canonical_fn, theta)

    @cached_property
    def _frame_fn(self):
        h = self.gauge.frame(self.gauge.blocks)
        hs = list(h) if isinstance(self.gauge, ComposedGauge) else [h]
        return self._lambdify([self._coords], [m.tolist() for m in hs])

    def frame(self, theta) -> list[np.ndarray]:
        """``h(θ)``: one matrix per factor (a single one for a :class:`Gauge`)."""
        if self.backend == "mpmath":
            with mpmath.workdps(self.dps):
                return [np.array(m, dtype=object) for m in self._frame_fn(theta)]
        return [np.asarray(m, dtype=np.float64) for m in self._frame_fn(theta)]

    @cached_property
    def _group_matrix_fn(self):
        g = self._generic if isinstance(self.gauge, ComposedGauge) else [self._generic]
        return self._lambdify([self._group_symbols], [m.tolist() for m in g])

    def group_matrices(self, sample: GroupSample) -> list[np.ndarray]:
        """The representation matrices of ``g`` (one per factor)."""
        ms = [np.array(m, dtype=object if self.backend == "mpmath" else np.float64)
              for m in self._group_matrix_fn(self._array(sample.values))]
        if sample.component:
            c = self._component_element(sample)
            ms = [np.array(c.tolist(), dtype=ms[0].dtype) @ ms[0]]
        return ms

    @cached_property
    def _metric_fn(self):
        return self._lambdify([self._coords], self.gauge.metric_at(self.gauge.blocks).tolist())

    def metric(self, theta) -> np.ndarray:
        """Invariant metric ``G(θ)`` (``n×n``)."""
        return self._call(self._metric_fn, theta).reshape(self.n, self.n)

    def vertical_projector(self, theta) -> np.ndarray:
        """``P_V = X (XᵀGX)⁻¹ XᵀG``; raises :class:`GaugeError` on a degenerate orbit."""
        x = self.generators(theta)
        norms = [max(abs(float(e)) for e in x[:, a]) if self.n else 0.0 for a in range(self.k)]
        for a, nrm in enumerate(norms):
            if nrm == 0.0:
                raise GaugeError(self.gauge.name, None,
                                 f"degenerate orbit: generator {self.gauge.labels[a]} vanishes at θ (zero-norm orbit)")
        with np.errstate(all="ignore"):
            gm = self.metric(theta)
        if self.backend == "numpy" and not np.all(np.isfinite(gm)):
            raise GaugeError(self.gauge.name, None, "degenerate orbit: the canonical frame (hence the metric) is "
                             "undefined at θ (a norm it divides by is zero)")
        gamma = x.T @ gm @ x
        if self.backend == "mpmath":
            with mpmath.workdps(self.dps):
                mg = mpmath.matrix(gamma.tolist())
                if abs(mpmath.det(mg)) < mpmath.mpf(10) ** (-self.dps // 2):
                    raise GaugeError(self.gauge.name, None, "degenerate orbit: Gram matrix XᵀGX is singular")
                inv = np.array((mg**-1).tolist(), dtype=object)
            return x @ inv @ x.T @ gm
        s = np.linalg.svd(gamma, compute_uv=False)
        if s.size and s.min() <= 1e-12 * max(1.0, s.max()):
            raise GaugeError(self.gauge.name, None,
                             f"degenerate orbit: Gram matrix XᵀGX is singular (singular values {s.min():.3g})")
        return x @ np.linalg.solve(gamma, x.T @ gm)

    @cached_property
    def _charges_fn(self):
        return self._lambdify([self._coords], [c.expr for c in self.gauge.charges])

    def charges(self, theta) -> np.ndarray:
        """``Q_c(θ)`` for every derived charge (length = number of charges)."""
        return self._call(self._charges_fn, theta)

    @cached_property
    def charge_matrices(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(M_c, b_c)`` with ``Q_c = θᵀM_cθ + 2b_cᵀθ``."""
        return [(np.array(c.M.tolist(), dtype=np.float64), np.array(list(c.b), dtype=np.float64))
                for c in self.gauge.charges]

    # -------------------------------------------------------------------- the layer
    @cached_property
    def input_shapes(self) -> dict[str, tuple[int, int]]:
        return {k: (m.rows, m.cols) for k, m in self.gauge.model.inputs.items()}

    @cached_property
    def _input_slots(self) -> list[tuple[str, int, sp.Symbol]]:
        """Free input entries; an entry that is an expression (e.g. ``p_last = 1 - Σ p``) is derived."""
        return [(k, i, e) for k, m in self.gauge.model.inputs.items() for i, e in enumerate(m) if e.is_Symbol]

    @cached_property
    def _input_symbols(self) -> list[sp.Symbol]:
        return [s for _, _, s in self._input_slots]

    @cached_property
    def _output_exprs(self) -> list[sp.Expr]:
        model = self.gauge.model
        outs = [sp.sympify(e).xreplace(model.constants) for e in model.forward(self.gauge.blocks, model.inputs,
                                                                                lambda e: e)]
        known = set(self._coords) | set(self._input_symbols)
        free = sorted({s for e in outs for s in e.free_symbols} - known, key=str)
        if free:
            raise GaugeError(self.gauge.name, None, f"layer symbol {free[0]} is neither a parameter, an input nor "
                             "a declared constant (ReferenceModel.constants)")
        return outs

    def complete_inputs(self, inputs: ArrayParams) -> dict[str, np.ndarray]:
        """Copy of ``inputs`` whose derived entries (e.g. ``p_last = 1 - Σ p``) are set from the free ones."""
        out = {k: np.array(v, dtype=object if np.asarray(v).dtype == object else None, copy=True)
               for k, v in inputs.items()}
        values = {s: np.ravel(out[k])[i] for k, i, s in self._input_slots}
        for k, m in self.gauge.model.inputs.items():
            flat = out[k].reshape(-1)
            for i, e in enumerate(m):
                if not e.is_Symbol:
                    flat[i] = sp.lambdify(list(values), e, "mpmath" if flat.dtype == object else "math")(
                        *values.values())
        return out

    def _flat_inputs(self, inputs: ArrayParams):
        """Values of the free input symbols; a derived entry (e.g. ``p_last = 1 - Σ p``) must agree."""
        missing = [k for k in self.input_shapes if k not in inputs]
        if missing:
            raise GaugeError(self.gauge.name, missing[0], "layer input missing")
        flat = [np.ravel(inputs[k])[i] for k, i, _ in self._input_slots]
        values = dict(zip(self._input_symbols, flat, strict=True))
        for k, m in self.gauge.model.inputs.items():
            for i, e in enumerate(m):
                if not e.is_Symbol:
                    given, derived = float(np.ravel(inputs[k])[i]), float(e.subs(values))
                    if abs(given - derived) > 1e-9 * max(1.0, abs(derived)):
                        raise GaugeError(self.gauge.name, k, f"input entry {i} is {given!r} but the layer defines "
                                         f"it as {e} = {derived!r}")
        return self._array(flat)

    def outputs(self, theta, inputs: ArrayParams) -> np.ndarray:
        """The reference layer's outputs (the loss itself when ``generic_loss`` is false).

        Evaluated by running the symbolic forward pass on SymPy floats (30 digits, or
        ``dps + 10`` for mpmath), each intermediate rounded by the stage: this needs no
        compilation, so it stays fast for the deep transformer block.
        """
        model, digits = self.gauge.model, (30 if self.backend == "numpy" else self.dps + 10)
        theta = [sp.Float(str(v), digits) for v in np.ravel(theta)]
        if len(theta) != self.n:
            raise GaugeError(self.gauge.name, None, f"θ has {len(theta)} entries, expected {self.n}")
        params = self.gauge.unflatten(theta)
        flat = dict(zip(self._input_symbols, self._flat_inputs(inputs), strict=True))
        values = {s: sp.Float(str(v), digits) for s, v in flat.items()}
        inp = {k: m.xreplace(values) for k, m in model.inputs.items()}
        consts = {s: sp.Float(v, digits) for s, v in model.constants.items()}

        def stage(e):
            return sp.sympify(e).xreplace(consts).evalf(digits)

        outs = [stage(e) for e in model.forward(params, inp, stage)]
        if any(not e.is_Number for e in outs):
            raise GaugeError(self.gauge.name, None, "layer output did not evaluate to a number (undeclared symbol?)")
        if self.backend == "mpmath":
            return np.array([mpmath.mpf(str(e)) for e in outs], dtype=object)
        return np.array([float(e) for e in outs], dtype=np.float64)

    @cached_property
    def _loss_and_targets(self):
        outs = self._output_exprs
        if not self.gauge.model.generic_loss:
            return outs[0], []
        targets = list(sp.symbols(f"y_0:{len(outs)}", real=True))
        return sum((o - y) ** 2 for o, y in zip(outs, targets)) / 2, targets

    @cached_property
    def _gradient_fn(self):
        loss, targets = self._loss_and_targets
        grad = [sp.diff(loss, s) for s in self._coords]
        return self._lambdify([self._coords, self._input_symbols, targets], grad)

    @property
    def n_targets(self) -> int:
        return len(self._loss_and_targets[1])

    def loss(self, theta, inputs: ArrayParams, targets=()):
        """Test loss: the layer's loss, or ``½‖outputs - y‖²`` for a generic-loss layer."""
        outs = self.outputs(theta, inputs)
        if not self.gauge.model.generic_loss:
            return outs[0]
        if len(targets) != len(outs):
            raise GaugeError(self.gauge.name, None, f"{len(targets)} targets for {len(outs)} outputs")
        return sum((o - y) ** 2 for o, y in zip(outs, self._array(list(targets)), strict=True)) / 2

    def gradient(self, theta, inputs: ArrayParams, targets=()) -> np.ndarray:
        """``∇_θ loss`` (length ``n``), differentiated symbolically."""
        return self._call(self._gradient_fn, theta, self._flat_inputs(inputs), self._array(list(targets)))


def compile_gauge(gauge: GaugeBase, backend: str = "numpy", dps: int = 50) -> NumericGauge:
    """Shorthand for :class:`NumericGauge`."""
    return NumericGauge(gauge, backend, dps)


__all__ = ["ArrayParams", "GroupSample", "NumericGauge", "compile_gauge"]
