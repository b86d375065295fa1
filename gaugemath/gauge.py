"""The gauge abstraction: a Lie group acting on named parameter blocks of a reference layer.

A gauge is *given* by three things only: the group (:mod:`gaugemath.groups`), its action
on the parameter blocks, and a canonical frame ``h(θ) ∈ G``. Everything else is *derived*:

* generators (fundamental vector fields) ``X_a(θ) = d/dt|₀ (I + t ξ_a)·θ``;
* brackets of the generator fields and their structure constants;
* the invariant metric, pulled back through the frame: ``G(θ) = D(h(θ))ᵀ D(h(θ))`` where
  ``D(g)`` is the linear part of ``θ ↦ g·θ``;
* the ρ-orthogonal projectors ``P_V = X Γ⁻¹ Xᵀ G`` (``Γ = Xᵀ G X``), ``P_H = I - P_V``;
* Noether charges ``Q_c = θᵀ M_c θ + 2 b_cᵀ θ`` for every generator combination
  ``X_c(θ) = M_c θ + b_c`` with ``M_c`` symmetric; ``∇Q_c = 2 X_c`` so ``Q_c`` is conserved
  by gradient flow of any invariant loss.

Parameters are flattened block by block in insertion order, row-major; ``n`` is the number
of scalar coordinates and ``k`` the dimension of the Lie algebra.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

from .errors import GaugeError
from .exact import canonical
from .groups import MatrixGroup

Params = dict[str, sp.Matrix]
Stage = Callable[[sp.Expr], sp.Expr]


def block_symbols(name: str, rows: int, cols: int = 1) -> sp.Matrix:
    """A ``rows×cols`` matrix of real symbols named ``name[i,j]`` (``name[i]`` for vectors)."""
    if cols == 1:
        return sp.Matrix(rows, 1, lambda i, _: sp.Symbol(f"{name}[{i}]", real=True))
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}[{i},{j}]", real=True))


@dataclass(frozen=True)
class ReferenceModel:
    """The layer a gauge lives in, written in SymPy.

    ``forward(params, inputs, stage)`` returns the block's outputs as expressions. It must
    pass every pre-activation, score or normaliser through ``stage`` (the proofs use it to
    put intermediate results in canonical form, or to truncate them to first order).

    If ``generic_loss`` is true the loss is ``F(outputs)`` for an *arbitrary* smooth ``F``
    (a functional symmetry, strictly stronger than invariance of one loss); otherwise the
    single output *is* the loss.
    """

    description: str
    inputs: Params
    forward: Callable[[Params, Params, Stage], list[sp.Expr]]
    generic_loss: bool = True
    assumptions: tuple[str, ...] = ()
    #: symbols of the layer that are neither parameters nor inputs (e.g. a norm's ``ε``), with
    #: the value numerical evaluation uses; proofs keep them symbolic.
    constants: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Charge:
    """A conserved quantity ``Q(θ) = θᵀ M θ + 2 bᵀ θ`` with ``∇Q = 2 X_c(θ)``.

    ``coefficients`` are the integer weights ``c_a`` of the generator combination
    ``X_c = Σ_a c_a X_a``.
    """

    label: str
    coefficients: tuple[sp.Integer, ...]
    expr: sp.Expr
    M: sp.Matrix
    b: sp.Matrix


class GaugeBase:
    """Derivations shared by single-group gauges and composed gauges."""

    name: str
    summary: str
    blocks: Params
    model: ReferenceModel
    labels: tuple[str, ...]
    frame_name: str
    notes: tuple[str, ...]

    # -- to be provided -------------------------------------------------------------------
    def act(self, g, params: Params, simplify: bool = True) -> Params:  # pragma: no cover - abstract
        raise NotImplementedError

    def frame(self, params: Params, stage: Stage | None = None):  # pragma: no cover - abstract
        raise NotImplementedError

    def generic_element(self, prefix: str = "g"):  # pragma: no cover - abstract
        raise NotImplementedError

    def linear_part(self, g) -> sp.Matrix:  # pragma: no cover - abstract
        raise NotImplementedError

    def generator_fields(self, params: Params) -> list[Params]:  # pragma: no cover
        raise NotImplementedError

    # -- bookkeeping ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.labels)

    @cached_property
    def coordinates(self) -> list[sp.Symbol]:
        return [s for m in self.blocks.values() for s in m]

    def flatten(self, params: Params) -> sp.Matrix:
        """Stack the blocks (row-major) into an ``n×1`` column."""
        missing = [b for b in self.blocks if b not in params]
        if missing:
            raise GaugeError(self.name, missing[0], "parameter block missing")
        out = []
        for b, ref in self.blocks.items():
            if params[b].shape != ref.shape:
                raise GaugeError(self.name, b, f"shape {params[b].shape} != expected {ref.shape}")
            out.extend(params[b])
        return sp.Matrix(out)

    def unflatten(self, vec: Sequence[sp.Expr]) -> Params:
        out, i = {}, 0
        for b, ref in self.blocks.items():
            n = ref.rows * ref.cols
            out[b] = sp.Matrix(ref.rows, ref.cols, list(vec[i : i + n]))
            i += n
        return out

    def _fresh(self) -> tuple[sp.Matrix, Params]:
        """Fresh coordinate symbols (independent of anything a frame element depends on)."""
        fresh = sp.Matrix([sp.Dummy(f"u{i}", real=True) for i in range(len(self.coordinates))])
        return fresh, self.unflatten(list(fresh))

    def substitute(self, expr, params: Params):
        """Replace the reference symbols by ``params`` (safe for polynomial ``expr`` only)."""
        return expr.subs(dict(zip(self.coordinates, self.flatten(params))), simultaneous=True)

    def _check_keys(self, params: Params, where: str) -> None:
        unknown = [b for b in params if b not in self.blocks]
        if unknown:
            raise GaugeError(self.name, unknown[0], f"{where}: no such block (blocks: {list(self.blocks)})")

    # -- derived objects ------------------------------------------------------------------
    def canonical(self, params: Params, stage: Stage | None = None, simplify: bool = True) -> Params:
        """The canonical representative ``θ̃ = h(θ)·θ`` (G-invariant)."""
        return self.act(self.frame(params, stage), params, simplify=simplify)

    @property
    def isometric(self) -> bool:
        """Whether ``D(g)ᵀD(g) = I`` for every ``g`` (then the invariant metric is Euclidean)."""
        return False

    def generators_at(self, params: Params) -> sp.Matrix:
        """``X(θ)``: the ``n×k`` matrix whose column ``a`` is the generator ``X_a(θ)``."""
        return sp.Matrix.hstack(*[self.flatten(f) for f in self.generator_fields(params)])

    @cached_property
    def generators(self) -> sp.Matrix:
        return self.generators_at(self.blocks)

    @cached_property
    def affine_parts(self) -> list[tuple[sp.Matrix, sp.Matrix]]:
        """``(M_a, b_a)`` with ``X_a(θ) = M_a θ + b_a``; raises if a generator is not affine."""
        theta = sp.Matrix(self.coordinates)
        out = []
        for a in range(self.dim):
            x = self.generators[:, a]
            m = x.jacobian(theta)
            if any(e.free_symbols & set(self.coordinates) for e in m):
                raise GaugeError(self.name, None, f"generator {self.labels[a]} is not affine in the parameters")
            b = x - m * theta
            out.append((m, b.applyfunc(sp.expand)))
        return out

    def metric_at(self, params: Params) -> sp.Matrix:
        """Invariant metric ``G(θ) = D(h(θ))ᵀ D(h(θ))`` (``n×n``): Euclidean in canonical coordinates.

        For an isometric action (``D(g)ᵀD(g) = I`` for all ``g``, checked exactly) this is ``I``.
        """
        if self.isometric:
            return sp.eye(len(self.coordinates))
        d = self.linear_part(self.frame(params))
        return (d.T * d).applyfunc(sp.cancel)

    def gram_at(self, params: Params) -> sp.Matrix:
        """``Γ(θ) = Xᵀ G X`` (``k×k``); singular exactly when the orbit is degenerate."""
        x = self.generators_at(params)
        return (x.T * self.metric_at(params) * x).applyfunc(sp.cancel)

    def vertical_projector_at(self, params: Params) -> sp.Matrix:
        """``P_V(θ) = X Γ⁻¹ Xᵀ G``: the ρ-orthogonal projector onto the orbit tangent."""
        x = self.generators_at(params)
        g = self.metric_at(params)
        gamma = (x.T * g * x).applyfunc(sp.cancel)
        if gamma.det() == 0:
            raise GaugeError(self.name, None, "degenerate orbit: the Gram matrix of the generators is singular")
        return (x * gamma.inv() * x.T * g).applyfunc(sp.cancel)

    def horizontal_projector_at(self, params: Params) -> sp.Matrix:
        """``P_H = I - P_V``."""
        return sp.eye(len(self.coordinates)) - self.vertical_projector_at(params)

    @cached_property
    def charges(self) -> list[Charge]:
        """Noether charges: one per basis vector of ``{c : Σ c_a M_a symmetric}``."""
        if not self.dim:
            return []
        theta = sp.Matrix(self.coordinates)
        skew = sp.Matrix.hstack(*[(m - m.T).reshape(m.rows * m.cols, 1) for m, _ in self.affine_parts])
        out = []
        for vec in skew.nullspace():
            c = _primitive(vec)
            m = sum((ci * mi for ci, (mi, _) in zip(c, self.affine_parts)), sp.zeros(*self.affine_parts[0][0].shape))
            b = sum((ci * bi for ci, (_, bi) in zip(c, self.affine_parts)), sp.zeros(len(theta), 1))
            expr = sp.expand((theta.T * m * theta)[0] + 2 * (b.T * theta)[0])
            label = " + ".join(
                (f"{ci}*" if ci != 1 else "") + self.labels[a] for a, ci in enumerate(c) if ci != 0
            ).replace("+ -", "- ")
            out.append(Charge(label=label, coefficients=tuple(c), expr=expr, M=m, b=b))
        return out

    @cached_property
    def field_brackets(self) -> dict[tuple[int, int], tuple[sp.Expr, ...]]:
        """``f_ab^c`` with ``[X_a, X_b] = Σ_c f_ab^c X_c`` (vector-field bracket), exact.

        ``[X, Y](θ) = DY(θ) X(θ) - DX(θ) Y(θ)``. Raises if the fields do not close.
        """
        theta = sp.Matrix(self.coordinates)
        x = self.generators
        jac = [x[:, a].jacobian(theta) for a in range(self.dim)]
        out = {}
        for a, b in itertools.combinations(range(self.dim), 2):
            br = (jac[b] * x[:, a] - jac[a] * x[:, b]).applyfunc(sp.expand)
            out[(a, b)] = self._solve_in_span(br, f"[{self.labels[a]}, {self.labels[b]}]")
        return out

    def _solve_in_span(self, vec: sp.Matrix, what: str) -> tuple[sp.Expr, ...]:
        theta = sp.Matrix(self.coordinates)
        if all(e == 0 for e in vec):
            return tuple(sp.S.Zero for _ in range(self.dim))
        # coefficients are constants: match them on the polynomial coefficients in θ
        rows, rhs = [], []
        for i in range(vec.rows):
            polys = [sp.Poly(self.generators[i, a], *theta) for a in range(self.dim)]
            target = sp.Poly(vec[i], *theta)
            monos = set(target.monoms()).union(*[p.monoms() for p in polys])
            for mono in sorted(monos):
                rows.append([p.coeff_monomial(mono) for p in polys])
                rhs.append(target.coeff_monomial(mono))
        sol, params = sp.Matrix(rows).gauss_jordan_solve(sp.Matrix(rhs))
        sol = sol.subs({p: 0 for p in params})
        resid = (self.generators * sol - vec).applyfunc(sp.expand)
        if any(e != 0 for e in resid):
            raise GaugeError(self.name, None, f"generators do not close under the bracket {what}")
        return tuple(sol)

    def describe_field(self, a: int) -> dict[str, sp.Matrix]:
        """Generator ``X_a`` as one tangent matrix per block (zero blocks omitted)."""
        f = self.unflatten(list(self.generators[:, a]))
        return {b: m for b, m in f.items() if any(e != 0 for e in m)}


def _primitive(vec: sp.Matrix) -> list[sp.Integer]:
    """Scale a rational vector to coprime integers with a positive first nonzero entry."""
    den = sp.lcm_list([sp.fraction(sp.nsimplify(e))[1] for e in vec])
    ints = [sp.Integer(sp.nsimplify(e) * den) for e in vec]
    g = sp.gcd_list([abs(i) for i in ints if i != 0])
    ints = [i // g for i in ints]
    first = next(i for i in ints if i != 0)
    return [-i for i in ints] if first < 0 else ints


class Gauge(GaugeBase):
    """A matrix Lie group acting on named parameter blocks.

    Args:
        name: catalogue name, used in errors and certificates.
        summary: one line stating the symmetry.
        group: the :class:`~gaugemath.groups.MatrixGroup`.
        blocks: reference parameter blocks (symbol matrices), the ones the group acts on.
        action: ``action(g, params) -> params'``, a left action: ``(g₁g₂)·θ = g₁·(g₂·θ)``.
            It may return a subset of the blocks; the others are left unchanged.
        frame: ``frame(params) -> h ∈ G`` with ``h(g·θ) = h(θ) g⁻¹`` (to be proved).
        frame_name: short description of the frame (e.g. ``"balance"``).
        model: the :class:`ReferenceModel` whose loss the group must leave invariant.
        notes: statements of scope printed in the certificate.
    """

    def __init__(
        self,
        name: str,
        *,
        summary: str,
        group: MatrixGroup,
        blocks: Params,
        action: Callable[[sp.Matrix, Params], Params],
        frame: Callable[[Params], sp.Matrix],
        frame_name: str,
        model: ReferenceModel,
        notes: Sequence[str] = (),
    ):
        self.name, self.summary, self.group = name, summary, group
        self.blocks = dict(blocks)
        self._action, self._frame = action, frame
        self.frame_name, self.model, self.notes = frame_name, model, tuple(notes)
        self.labels = group.labels
        clash = set(self.blocks) & set(model.inputs)
        if clash:
            raise GaugeError(name, sorted(clash)[0], "block is both a gauge block and a model input")
        out = self.act(group.identity, self.blocks)
        if any(out[b] != self.blocks[b] for b in self.blocks):
            raise GaugeError(name, None, "the identity of the group does not act trivially")

    def act(self, g: sp.Matrix, params: Params, simplify: bool = True) -> Params:
        """``g·θ``, with every entry put in lowest terms unless ``simplify=False``."""
        self._check_keys(params, "act")
        new = self._action(g, dict(params))
        self._check_keys(new, "action result")
        out = dict(params)
        for b, m in new.items():
            if m.shape != self.blocks[b].shape:
                raise GaugeError(self.name, b, f"action returned shape {m.shape}, expected {self.blocks[b].shape}")
            out[b] = m.applyfunc(canonical) if simplify else m
        return out

    def frame(self, params: Params, stage: Stage | None = None) -> sp.Matrix:
        """``h(θ) ∈ G``. A frame function that takes ``stage`` passes its invariant
        intermediates through it (the proofs abbreviate them)."""
        if stage is not None and "stage" in inspect.signature(self._frame).parameters:
            return self._frame(params, stage=stage)
        return self._frame(params)

    @cached_property
    def isometric(self) -> bool:
        g, _ = self.generic_element("g")
        for elem in (g, *self.group.components):
            d = self.linear_part(elem)
            if any(e != 0 for e in (d.T * d - sp.eye(d.rows)).applyfunc(sp.cancel)):
                return False
        return True

    def generic_element(self, prefix: str = "g") -> tuple[sp.Matrix, dict[sp.Symbol, str]]:
        return self.group.generic(prefix)

    def compose(self, g1: sp.Matrix, g2: sp.Matrix) -> sp.Matrix:
        return (g1 * g2).applyfunc(sp.cancel)

    def linear_part(self, g: sp.Matrix) -> sp.Matrix:
        """``D(g)``: Jacobian of ``θ ↦ g·θ`` (constant in θ for the affine actions we admit)."""
        fresh, params = self._fresh()
        moved = self.flatten(self._action_full(g, params))
        return moved.jacobian(fresh).applyfunc(sp.cancel)

    def _action_full(self, g, params):
        out = dict(params)
        out.update(self._action(g, dict(params)))
        return out

    def generator_fields(self, params: Params) -> list[Params]:
        t = sp.Symbol("t")
        fields = []
        for xi in self.group.basis:
            moved = self._action_full(self.group.identity + t * xi, params)
            fields.append({b: sp.diff(moved[b], t).subs(t, 0).applyfunc(sp.expand) for b in self.blocks})
        return fields


class ComposedGauge(GaugeBase):
    """Several gauges acting on one parameter namespace (e.g. a transformer block).

    Group elements are tuples ``(g_1, …, g_m)`` acting in order: ``g·θ = g_m·(…(g_1·θ))``.
    The canonical frame canonicalises factor by factor in the same order, each factor's
    frame evaluated on the output of the previous one; the proof checks that the resulting
    canonical point is invariant under the whole (generally non-abelian) group generated.
    """

    def __init__(self, name: str, *, summary: str, factors: Sequence[Gauge], model: ReferenceModel,
                 notes: Sequence[str] = ()):
        self.name, self.summary, self.factors = name, summary, tuple(factors)
        self.model, self.notes = model, tuple(notes)
        self.blocks = {}
        for f in self.factors:
            for b, m in f.blocks.items():
                if b in self.blocks and self.blocks[b] != m:
                    raise GaugeError(name, b, f"factor '{f.name}' declares a different shape/symbols")
                self.blocks[b] = m
        self.labels = tuple(f"{f.name}:{lab}" for f in self.factors for lab in f.labels)
        self.frame_name = " then ".join(f"{f.name} ({f.frame_name})" for f in self.factors)

    def _local(self, f: Gauge, params: Params) -> Params:
        return {b: params[b] for b in f.blocks}

    def act(self, g: Sequence[sp.Matrix], params: Params, simplify: bool = True) -> Params:
        self._check_keys(params, "act")
        out = dict(params)
        for f, gi in zip(self.factors, g, strict=True):
            out.update(f.act(gi, self._local(f, out), simplify=simplify))
        return out

    def act_reversed(self, g: Sequence[sp.Matrix], params: Params) -> Params:
        """Apply the factors in the opposite order (another element of the generated group)."""
        out = dict(params)
        for f, gi in reversed(list(zip(self.factors, g, strict=True))):
            out.update(f.act(gi, self._local(f, out)))
        return out

    def frame(self, params: Params, stage: Stage | None = None) -> tuple[sp.Matrix, ...]:
        out, hs = dict(params), []
        for f in self.factors:
            h = f.frame(self._local(f, out), stage)
            hs.append(h)
            out.update(f.act(h, self._local(f, out)))
        return tuple(hs)

    def generic_element(self, prefix: str = "g"):
        elems, kinds = [], {}
        for i, f in enumerate(self.factors):
            e, k = f.generic_element(f"{prefix}{i}")
            elems.append(e)
            kinds.update(k)
        return tuple(elems), kinds

    def linear_part(self, g: Sequence[sp.Matrix]) -> sp.Matrix:
        fresh, params = self._fresh()
        return self.flatten(self.act(g, params)).jacobian(fresh).applyfunc(sp.cancel)

    def generator_fields(self, params: Params) -> list[Params]:
        fields = []
        for f in self.factors:
            for local in f.generator_fields(self._local(f, params)):
                full = {b: sp.zeros(*m.shape) for b, m in self.blocks.items()}
                full.update(local)
                fields.append(full)
        return fields


@dataclass
class Catalogue:
    """Read-only mapping ``name -> constructor`` of the built-in gauges."""

    entries: dict[str, Callable[..., GaugeBase]] = field(default_factory=dict)

    def __getitem__(self, name: str):
        return self.entries[name]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __contains__(self, name) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def __repr__(self) -> str:
        return "gauges(" + ", ".join(self.entries) + ")"
