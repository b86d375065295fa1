"""``discover(layer)``: the Lie algebra of affine parameter symmetries of a layer, proved and complete.

Pipeline (``../shared/spec/ddc.md`` §6), per instance of the layer:

1. **search** (:mod:`~gaugemath.discovery.search`): numeric null space of ``⟨∇_θ f, Aθ + b⟩ = 0``
   at random points, rationalised to exact candidates ``X_a(θ) = A_a θ + b_a`` (``n = #θ``);
2. **prove** (:mod:`~gaugemath.discovery.proof`): every candidate's exact jet ``⟨∇_θ f_o, X_a⟩`` must
   simplify to ``0``; a candidate that does not is *dropped* (kept in ``rejected`` with its residual);
3. **close**: exact brackets ``[X_a, X_b] = Σ_c f_ab^c X_c`` (the core raises if they leave the span);
4. **complete**: ``complete`` is true when the proved dimension equals the numeric null-space
   dimension, i.e. no invariant affine direction found numerically is missing from the algebra;
5. **pattern** (:mod:`~gaugemath.discovery.patterns`, :mod:`~gaugemath.discovery.general`): per-unit
   families, and across several widths the general form and a dimension formula.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

from ..describe import sstr
from ..errors import GaugeError
from ..gauge import Charge, GaugeBase, _primitive
from .construct import build_gauge
from .general import GeneralForm, general_form
from .layer import Layer
from .patterns import Family, families
from .proof import Fields, GeneratorProof, prove_fields
from .search import Candidate, NullSpace, null_space


def _integral(c: Candidate) -> Candidate:
    """Scale ``(A, b)`` to coprime integers with a positive first non-zero entry."""
    vec = sp.Matrix(list(c.A) + list(c.b))
    ints = _primitive(vec)
    n = c.A.rows
    return Candidate(sp.Matrix(n, n, ints[: n * n]), sp.Matrix(ints[n * n :]))


def _labels(fams: Sequence[Family], count: int) -> list[str]:
    labels = [""] * count
    seen: dict[str, int] = {}
    for f in fams:
        i = seen[f.kind] = seen.get(f.kind, -1) + 1
        for u, g in zip(f.units or range(len(f.members)), f.members):
            labels[g] = f"{f.kind}{i}[{u}]" if f.kind != "mix" else f"mix[{u}]"
    return labels


@dataclass
class LieAlgebra:
    """A proved, closed Lie algebra of affine symmetry generators of a :class:`Layer`.

    Attributes:
        layer: the instance it was discovered on.
        candidates: the generators ``X_a(θ) = A_a θ + b_a`` (integer ``A_a``: ``n×n``, ``b_a``: ``n×1``).
        families: their per-unit families (:class:`~gaugemath.discovery.patterns.Family`).
        proofs: exact residuals of each generator (all zero).
        search: the numeric null space (its ``dim`` is the completeness bound).
        rejected: candidates whose exact proof failed (never part of the algebra).
        general: the general form across widths (``None`` for a single instance).
        seconds: time per stage.
    """

    layer: Layer
    candidates: list[Candidate]
    families: list[Family]
    proofs: list[GeneratorProof]
    search: NullSpace
    rejected: list[GeneratorProof] = field(default_factory=list)
    general: GeneralForm | None = None
    instances: list[LieAlgebra] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.labels = _labels(self.families, len(self.candidates))
        self.fields = Fields(self.layer, self.candidates, self.labels)

    # ------------------------------------------------------------------ structure
    @property
    def dim(self) -> int:
        return len(self.candidates)

    @property
    def complete(self) -> bool:
        """Proved dimension plus the field-dependent translations ``θ_k T`` equals the numeric null-space
        dimension: no invariant affine direction is missing."""
        return self.dim + self.search.field_dependent == self.search.dim

    @property
    def generators(self) -> list[dict[str, sp.Matrix]]:
        """Generator ``a`` as one tangent matrix ``X_a(θ)`` per block it moves (a parameter-space vector field)."""
        return [self.fields.describe_field(a) for a in range(self.dim)]

    @cached_property
    def structure_constants(self) -> dict[tuple[int, int], tuple[sp.Rational, ...]]:
        """``f_ab^c`` (``a < b``) with ``[X_a, X_b] = Σ_c f_ab^c X_c``, exact.

        For affine fields ``[X_a, X_b](θ) = DX_b X_a − DX_a X_b = (A_b A_a − A_a A_b) θ + A_b b_a − A_a b_b``;
        the coefficients solve a rational linear system, and a bracket outside the span raises."""
        basis = sp.Matrix.hstack(*[sp.Matrix([*c.A, *c.b]) for c in self.candidates]) if self.dim else None
        out = {}
        for a, b in itertools.combinations(range(self.dim), 2):
            ca, cb = self.candidates[a], self.candidates[b]
            vec = sp.Matrix([*(cb.A * ca.A - ca.A * cb.A), *(cb.A * ca.b - ca.A * cb.b)])
            if not any(vec):
                out[(a, b)] = tuple(sp.S.Zero for _ in range(self.dim))
                continue
            try:
                sol, free = basis.gauss_jordan_solve(vec)
                sol = sol.subs({p: 0 for p in free})
            except ValueError:  # no solution: the bracket is outside the span
                sol = None
            if sol is None or basis * sol != vec:
                raise GaugeError(self.layer.name, None, f"[{self.labels[a]}, {self.labels[b]}] leaves the span of the "
                                 "proved generators: the algebra is not closed (a generator is missing)")
            out[(a, b)] = tuple(sol)
        return out

    def brackets(self) -> dict[tuple[str, str], dict[str, sp.Expr]]:
        """Non-zero structure constants: ``[X_a, X_b] = Σ_c f_ab^c X_c`` as ``{(a, b): {c: f_ab^c}}`` (exact)."""
        out = {}
        for (a, b), coefs in self.structure_constants.items():
            nz = {self.labels[c]: v for c, v in enumerate(coefs) if v != 0}
            if nz:
                out[(self.labels[a], self.labels[b])] = nz
        return out

    def orbit_dim(self, seed: int = 0) -> int:
        """Dimension of the orbit tangent space ``span{X_a(θ)}`` at a seeded random rational ``θ`` (exact rank).

        Can be below :attr:`dim`: ``X = ℓ(θ)·T`` for a constant symmetry ``T`` and a linear function ``ℓ``
        is an affine symmetry too, but moves along the same orbits (the same dead directions)."""
        return self._values(seed).rank() if self.dim else 0

    def _values(self, seed: int) -> sp.Matrix:
        rng = random.Random(seed)
        point = {s: sp.Rational(rng.randint(-999, 999), rng.randint(1, 97)) for s in self.layer.coordinates}
        return self.fields.generators.subs(point)

    def reduced(self) -> LieAlgebra:
        """A sub-algebra with the same orbit tangent spaces and no redundant generator: generators are kept
        (shifts, then scales, rotations, mixings) while they raise the generic rank; it must be closed."""
        if not self.dim:
            return self
        rank = {"shift": 0, "scale": 1, "rotate": 2, "mix": 3}
        order = sorted(range(self.dim), key=lambda g: next(rank[f.kind] for f in self.families if g in f.members))
        values = self._values(1)
        keep: list[int] = []
        for g in order:
            if values.extract(list(range(values.rows)), keep + [g]).rank() > len(keep):
                keep.append(g)
        return self.subalgebra(sorted(keep))

    @property
    def abelian(self) -> bool:
        return not self.brackets()

    @property
    def charges(self) -> list[Charge]:
        """Noether charges ``Q = θᵀMθ + 2bᵀθ`` of the symmetric generator combinations (core derivation)."""
        return self.fields.charges

    # ------------------------------------------------------------------ sub-algebras and gauges
    def subalgebra(self, which: Sequence[str | int]) -> LieAlgebra:
        """The sub-algebra spanned by the generators ``which`` (labels or indices); must be closed."""
        idx = [self.labels.index(w) if isinstance(w, str) else int(w) for w in which]
        sub = [self.candidates[i] for i in idx]
        for (a, b), coefs in self.structure_constants.items():
            if a in idx and b in idx and any(v != 0 for c, v in enumerate(coefs) if c not in idx):
                raise GaugeError(self.layer.name, None, f"[{self.labels[a]}, {self.labels[b]}] leaves the span: "
                                 f"{[self.labels[i] for i in idx]} is not a sub-algebra")
        fams = families(self.layer.params, [(c.A, c.b) for c in sub])
        return LieAlgebra(self.layer, sub, fams, [self.proofs[i] for i in idx], self.search)

    def frameable(self) -> LieAlgebra:
        """The sub-algebra of per-unit scale/shift/rotation generators (the part :meth:`to_gauge` supports)."""
        keep = [g for f in self.families if f.kind != "mix" for g in f.members]
        return self.subalgebra(sorted(keep))

    def to_gauge(self) -> GaugeBase:
        """A :class:`~gaugemath.Gauge` (or ``ComposedGauge``) for :func:`gaugemath.prove` and the backends.

        Raises :class:`~gaugemath.GaugeError` for generators with no canonical frame (``mix``).
        """
        return build_gauge(self.layer, self.families, [(c.A, c.b) for c in self.candidates], self.labels)

    # ------------------------------------------------------------------ text
    def describe(self) -> str:
        """Readable summary: dimension, completeness, generators, brackets, charges, general form."""
        s = self.search
        out = [f"# {self.layer.name}: Lie algebra of affine parameter symmetries", "",
               f"dim = {self.dim} (numeric null space: {s.dim} of {s.unknowns} unknowns, {s.equations} equations, "
               f"of which {s.field_dependent} field-dependent translations θ_k·T; "
               f"singular-value gap {s.singular_gap[0]:.1e} | {s.singular_gap[1]:.1e}); "
               + ("complete" if self.complete else "INCOMPLETE: some numeric directions were not proved"), ""]
        if self.rejected:
            out.append(f"{len(self.rejected)} numeric candidate(s) failed the exact proof and were dropped.")
        out += ["## Families", ""]
        out += [f"- {f.describe()} ({len(f.members)} generator(s))" for f in self.families] or ["- none"]
        if self.families:
            from .backend import support

            out += ["", "## Backends (DDCAdam / DDCMuon, torch and JAX)", ""]
            out += [f"- {s}" for s in support(self)]
        out += ["", "## Generators X_a(θ) (proved: ⟨∇f, X_a⟩ = 0 exactly)", ""]
        for lab, gen in zip(self.labels, self.generators):
            parts = "; ".join(f"{b} ↦ {sstr(m.tolist())}" for b, m in gen.items())
            out.append(f"- `{lab}`: {parts}")
        out += ["", "## Brackets", ""]
        br = self.brackets()
        out += [f"- [{a}, {b}] = " + " + ".join(f"{sstr(v)}·{c}" for c, v in cs.items())
                for (a, b), cs in br.items()] or ["- all vanish (abelian)"]
        out += ["", "## Conserved charges (Q = θᵀMθ + 2bᵀθ, ∇Q = 2X_c)", ""]
        out += [f"- Q[{c.label}] = {sstr(c.expr)}" for c in self.charges] or ["- none"]
        if self.general is not None:
            out += ["", "## General form", "", self.general.describe()]
        return "\n".join(out + [""])

    def __repr__(self) -> str:
        return f"LieAlgebra(layer={self.layer.name!r}, dim={self.dim}, complete={self.complete})"


def discover_instance(lay: Layer, seed: int = 0) -> LieAlgebra:
    """Search, prove and close the algebra of one instance (module docstring)."""
    t0 = time.perf_counter()
    ns = null_space(lay, seed=seed)
    t1 = time.perf_counter()
    cands = [_integral(c) for c in ns.candidates]
    fams = families(lay.params, [(c.A, c.b) for c in cands])
    trial = Fields(lay, cands, _labels(fams, len(cands)))
    proofs = prove_fields(trial, lay)
    t2 = time.perf_counter()
    kept = [i for i, p in enumerate(proofs) if p.proved]
    rejected = [p for p in proofs if not p.proved]
    cands = [cands[i] for i in kept]
    fams = families(lay.params, [(c.A, c.b) for c in cands])
    alg = LieAlgebra(lay, cands, fams, [proofs[i] for i in kept], ns, rejected)
    alg.structure_constants  # noqa: B018 - raises GaugeError if the proved generators do not close
    alg.seconds = {"search": t1 - t0, "prove": t2 - t1, "brackets": time.perf_counter() - t2}
    return alg


def discover(layer, widths: Sequence[Mapping[str, int]] | None = None, seed: int = 0, *, example=None,
             loss=None) -> LieAlgebra:
    """Discover the gauges of ``layer``.

    ``layer`` is a :class:`Layer` (one instance) or a builder ``layer(**width) -> Layer``; with a
    builder, ``widths`` lists the instances (default: the builder's defaults only). Each instance is
    searched and proved; the algebra of the first is returned, with ``instances`` (all of them)
    and ``general`` (the families and a dimension formula common to all widths).

    ``layer`` may also be an ``nn.Module`` at small widths, or a factory ``factory(**width) -> nn.Module``:
    each instance is traced with the binder's graph and translated into a :class:`Layer`
    (:func:`~gaugemath.discovery.from_torch.module_layer`; ``example``: its inputs, or a function of the
    module returning them, default ``module.example_inputs()``; ``loss`` as in ``bind()``). Its blocks
    name the module's parameters, so ``bind(model, discovered=algebra)`` binds the families on a model of
    any width.

    >>> import sympy as sp
    >>> from gaugemath.discovery import layer, relu
    >>> W1, W2, x = sp.MatrixSymbol("W1", 2, 2), sp.MatrixSymbol("W2", 1, 2), sp.MatrixSymbol("x", 2, 1)
    >>> alg = discover(layer("mlp", [W1, W2], [x], W2 * relu(W1 * x)))
    >>> alg.dim, alg.complete, alg.families[0].describe()
    (2, True, 'scale: W1[k, :]·α, W2[:, k]·α^-1')
    """
    if isinstance(layer, Layer):
        return discover_instance(layer, seed)
    if _is_module(layer):
        return discover_instance(_traced(layer, example, loss, {}), seed)
    if not callable(layer):
        raise GaugeError("discover", None, f"expected a Layer, an nn.Module or a builder of either, got "
                         f"{type(layer).__name__}")
    widths = [dict(w) for w in (widths or [{}])]
    instances = []
    for w in widths:
        lay = layer(**w)
        if _is_module(lay):
            lay = _traced(lay, example, loss, w)
        if not isinstance(lay, Layer):
            raise GaugeError("discover", None, f"the builder returned {type(lay).__name__}, not a Layer or an "
                             "nn.Module")
        instances.append(discover_instance(lay, seed))
    first = instances[0]
    first.instances = instances
    if len(instances) > 1:
        sizes = [{**a.layer.widths, **w} for a, w in zip(instances, widths)]
        first.general = general_form(sizes, [a.families for a in instances], [a.dim for a in instances])
    return first


def _is_module(x) -> bool:
    import sys

    nn = sys.modules.get("torch.nn")
    return nn is not None and isinstance(x, nn.Module)


def _traced(module, example, loss, widths: Mapping[str, int]) -> Layer:
    from .from_torch import module_layer

    return module_layer(module, example(module) if callable(example) else example, loss=loss, widths=widths)
