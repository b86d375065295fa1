"""Symbolic proofs of every fact the library claims about a gauge.

:func:`prove` runs the checks below on a gauge's reference instance and returns a
:class:`Certificate`. A check passes only if its residual is exactly ``0`` (see
:mod:`gaugemath.exact`); a failing check keeps its residual, which the certificate prints.

Checks (``g`` a generic group element in a rational parametrisation, ``θ`` symbolic):

action       ``e·θ = θ`` and ``g₁·(g₂·θ) = (g₁g₂)·θ``
invariance   ``outputs(g·θ) = outputs(θ)`` (for every component of the group)
orthogonal   ``⟨∇ outputs, X_a(θ)⟩ = 0`` for each generator (exact forward-mode jets)
brackets     generator fields close: ``[X_a, X_b] = Σ f_ab^c X_c`` and ``f = -c`` (left action)
metric       ``D(g)ᵀ G(g·θ) D(g) = G(θ)``
projector    ``P_V² = P_V``, ``G P_V`` symmetric, ``P_V X = X``, ``D(g) P_V(θ) = P_V(g·θ) D(g)``
frame        ``h(g·θ) = h(θ) g⁻¹`` and ``h(g·θ)·(g·θ) = h(θ)·θ``
charges      ``∇Q_c = 2 X_c``; ``⟨∇Q_c, ∇ outputs⟩ = 0`` (conserved by gradient flow);
             exact heavy-ball + weight-decay recursions for ``J = ⟨v, X_c⟩`` and ``Q_c``

For a :class:`~gaugemath.gauge.ComposedGauge` the frame is checked through invariance of the
canonical point under group elements applied in both orders, and the metric/projector
identities by exact rational arithmetic at seeded random rational points (Γ is a dense
``k×k`` matrix there, whose symbolic inverse is out of reach).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import sympy as sp

from .describe import short
from .errors import ProofError
from .exact import matrix_residual, residual
from .gauge import ComposedGauge, Gauge, GaugeBase, Params
from .stages import ActedStage, FirstOrderStage, LookupStage


@dataclass
class Check:
    """One symbolic identity and its residual (``0`` means proved)."""

    kind: str
    statement: str
    residual: sp.Expr | sp.Matrix
    expect_zero: bool = True
    detail: str = ""

    @property
    def passed(self) -> bool:
        zero = _is_zero(self.residual)
        return zero if self.expect_zero else not zero


def _is_zero(r) -> bool:
    if isinstance(r, sp.MatrixBase):
        return all(e == 0 for e in r)
    return r == 0


@dataclass
class Certificate:
    """The checks run on one construction of a gauge, with what was derived."""

    gauge: GaugeBase
    variant: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def raise_on_failure(self) -> None:
        for c in self.failures():
            raise ProofError(self.gauge.name, c.statement, short(c.residual, 2000))


# ------------------------------------------------------------------------------ helpers
def _forward(gauge: GaugeBase, params: Params, stage) -> sp.Matrix:
    return sp.Matrix(gauge.model.forward(params, gauge.model.inputs, stage))


def _jets(gauge: GaugeBase, directions: sp.Matrix) -> list[sp.Matrix]:
    """``d/dε_a outputs(θ + Σ_a ε_a·directions[:, a])`` at ``ε = 0``, exactly, for every column ``a``."""
    eps = sp.symbols(f"varepsilon_0:{directions.cols}")
    stage = FirstOrderStage(list(eps))
    moved = gauge.unflatten([t + sum(e * d for e, d in zip(eps, directions.row(i)))
                             for i, t in enumerate(gauge.coordinates)])
    out = _forward(gauge, moved, stage)
    zero = {e: 0 for e in eps}
    return [out.applyfunc(lambda v, e=e: residual(sp.diff(v, e).subs(zero))) for e in eps]


def _difference(a: sp.Matrix, b: sp.Matrix) -> sp.Matrix:
    return matrix_residual(a - b)


# ------------------------------------------------------------------------------- checks
def _check_action(gauge: Gauge) -> list[Check]:
    g1, _ = gauge.generic_element("a")
    g2, _ = gauge.generic_element("b")
    th = gauge.blocks
    ident = _difference(gauge.flatten(gauge.act(gauge.group.identity, th)), gauge.flatten(th))
    lhs = gauge.act(g1, gauge.act(g2, th, simplify=False), simplify=False)
    rhs = gauge.act(g1 * g2, th, simplify=False)
    return [Check("action", "identity acts trivially: e·θ = θ", ident),
            Check("action", "left action: g₁·(g₂·θ) = (g₁g₂)·θ", _difference(gauge.flatten(lhs), gauge.flatten(rhs)))]


def _moved(gauge: GaugeBase) -> list[tuple[str, Params, set]]:
    """``(label, g·θ, group symbols)`` for a generic element of every component."""
    g, kinds = gauge.generic_element("g")
    out = [("generic g", gauge.act(g, gauge.blocks), set(kinds))]
    if isinstance(gauge, Gauge):
        for i, c in enumerate(gauge.group.components):
            label = f"component {i + 1}: s·g, s = {sp.sstr(list(c.diagonal()))}"
            out.append((label, gauge.act(gauge.compose(c, g), gauge.blocks), set(kinds)))
    return out


def _check_invariance(gauge: GaugeBase) -> list[Check]:
    checks = []
    for label, moved_params, symbols in _moved(gauge):
        acted = ActedStage(symbols)
        moved = _forward(gauge, moved_params, acted)
        base = _forward(gauge, gauge.blocks, LookupStage(acted))
        checks.append(Check("invariance", f"loss invariant, {label}: outputs(g·θ) = outputs(θ)",
                            _difference(moved, base)))
    return checks


def _check_orthogonality(gauge: GaugeBase) -> list[Check]:
    jets = _jets(gauge, gauge.generators)
    return [Check("orthogonal", f"⟨∇L, X_{lab}⟩ = 0", jet) for lab, jet in zip(gauge.labels, jets)]


def _check_brackets(gauge: GaugeBase) -> list[Check]:
    fb = gauge.field_brackets  # raises GaugeError if the fields do not close
    nonzero = {k: v for k, v in fb.items() if any(v)}
    detail = ", ".join(
        f"[X_{gauge.labels[a]}, X_{gauge.labels[b]}] = "
        + " + ".join(f"{c}·X_{gauge.labels[i]}" for i, c in enumerate(v) if c != 0)
        for (a, b), v in nonzero.items()
    ) or "all brackets vanish (abelian)"
    checks = [Check("brackets", "generator fields close under the Lie bracket", sp.S.Zero, detail=detail)]
    if isinstance(gauge, Gauge):
        sc = gauge.group.structure_constants()
        diff = sp.Matrix([fb[k][i] + sc[k][i] for k in fb for i in range(gauge.dim)]) if fb else sp.zeros(1, 1)
        checks.append(Check("brackets", "ξ ↦ X_ξ is an anti-homomorphism: [X_a, X_b] = -X_[ξa,ξb]", diff))
    return checks


def _adjoint(gauge: Gauge, g: sp.Matrix) -> sp.Matrix:
    """``B(g)``: column ``a`` holds the coordinates of ``g⁻¹ ξ_a g`` in the basis ``ξ``."""
    basis = gauge.group.basis
    flat = sp.Matrix.hstack(*[b.reshape(b.rows * b.cols, 1) for b in basis])
    ginv = gauge.group.inverse(g)
    cols = []
    for xi in basis:
        target = (ginv * xi * g).applyfunc(sp.cancel).reshape(flat.rows, 1)
        sol, free = flat.gauss_jordan_solve(target)
        if free.rows:
            raise ProofError(gauge.name, "adjoint", "Lie-algebra basis is linearly dependent")
        cols.append(sol.applyfunc(sp.cancel))
    return sp.Matrix.hstack(*cols)


def _check_metric_projectors(gauge: Gauge) -> list[Check]:
    g, _ = gauge.generic_element("g")
    th = gauge.blocks
    moved = gauge.act(g, th)
    d = gauge.linear_part(g)
    gm, gm_moved = gauge.metric_at(th), gauge.metric_at(moved)
    x = gauge.generators
    checks = []
    if gauge.isometric:
        checks.append(Check("metric", "action is isometric: D(g)ᵀD(g) = I, hence G(θ) = D(h(θ))ᵀD(h(θ)) = I",
                            _difference(d.T * d, sp.eye(d.rows))))
    checks += [
        Check("metric", "metric is symmetric: G = Gᵀ", _difference(gm, gm.T)),
        Check("metric", "metric is G-invariant: D(g)ᵀ G(g·θ) D(g) = G(θ)", _difference(d.T * gm_moved * d, gm)),
    ]
    gamma = (x.T * gm * x).applyfunc(sp.cancel)
    if gamma.is_diagonal() or gauge.dim <= 2:
        p = gauge.vertical_projector_at(th)
        # P_V = X A with A = Γ⁻¹XᵀG, so P_V² = X (A X) A: reduce the k×k factor A X first.
        a = (gamma.inv() * x.T * gm).applyfunc(sp.cancel)
        ax = (a * x).applyfunc(sp.cancel)
        checks += [
            Check("projector", "P_V = X A with A = Γ⁻¹XᵀG, A X = I_k", _difference(ax, sp.eye(gauge.dim))),
            Check("projector", "P_V is idempotent: P_V² = X (A X) A = P_V", _difference(x * ax * a, p)),
            Check("projector", "P_V is ρ-orthogonal: G P_V = (G P_V)ᵀ", _difference(gm * p, (gm * p).T)),
            Check("projector", "P_V fixes the orbit tangent: P_V X = X", _difference(p * x, x)),
        ]
    else:
        checks += _projector_identities_at_points(gauge, lambda pt: gm.subs(pt), seed=0)
    # Equivariance: X(g·θ) = D(g) X(θ) B(g) with B = Ad(g⁻¹) and DᵀG(g·θ)D = G(θ) give
    # Γ(g·θ) = BᵀΓ(θ)B and hence P_V(g·θ) D(g) = D(g) X B B⁻¹Γ⁻¹B⁻ᵀ BᵀXᵀ DᵀG(g·θ)D = D(g) P_V(θ).
    b = _adjoint(gauge, g)
    det_b = sp.factor(b.det())
    return checks + [
        Check("projector", "orbit tangent is equivariant: X(g·θ) = D(g) X(θ) Ad(g⁻¹)",
              _difference(gauge.generators_at(moved), d * x * b)),
        Check("projector", "Ad(g⁻¹) is invertible", det_b, expect_zero=False, detail=f"det = {sp.sstr(det_b)}"),
        Check("projector", "P_V is equivariant: D(g) P_V(θ) = P_V(g·θ) D(g) (from the three identities above)",
              sp.S.Zero, detail="Γ(g·θ) = BᵀΓ(θ)B, so P_V(g·θ)D = D X B B⁻¹Γ⁻¹B⁻ᵀ BᵀXᵀ DᵀG(g·θ)D = D P_V(θ)"),
    ]


#: Random points for identities of rational functions are drawn from this many integers.
POINT_RANGE = 10**6


def _rational_point(gauge: GaugeBase, rng: random.Random) -> dict[sp.Symbol, sp.Rational]:
    """Seeded point with coordinates ``a/b``, ``|a| ≤ 10⁶``, ``1 ≤ b ≤ 10³``."""
    return {s: sp.Rational(rng.randint(-POINT_RANGE, POINT_RANGE) or 1, rng.randint(1, 1000))
            for s in gauge.coordinates}


def _projector_identities_at_points(gauge: GaugeBase, metric_at_point, seed: int, points: int = 2) -> list[Check]:
    """``P_V`` identities in exact rational arithmetic at seeded random points.

    Each residual is a rational function of θ; a non-zero one vanishes at a random point with
    probability ≤ degree / 2·10⁶ (Schwartz–Zippel), so two points make a false pass negligible.
    """
    rng = random.Random(seed)
    res_ax, res_idem, res_sym, res_fix = [], [], [], []
    for _ in range(points):
        pt = _rational_point(gauge, rng)
        gm, x = metric_at_point(pt), gauge.generators.subs(pt)
        a = (x.T * gm * x).inv() * x.T * gm
        p = x * a
        res_ax.append(a * x - sp.eye(gauge.dim))
        res_idem.append(p * p - p)
        res_sym.append(gm * p - (gm * p).T)
        res_fix.append(p * x - x)
    where = f" (exact rational arithmetic at {points} seeded random points)"
    return [
        Check("projector", "P_V = X A with A = Γ⁻¹XᵀG, A X = I_k" + where, _stacked(res_ax)),
        Check("projector", "P_V is idempotent: P_V² = P_V" + where, _stacked(res_idem)),
        Check("projector", "P_V is ρ-orthogonal: G P_V = (G P_V)ᵀ" + where, _stacked(res_sym)),
        Check("projector", "P_V fixes the orbit tangent: P_V X = X" + where, _stacked(res_fix)),
    ]


def _projector(x: sp.Matrix, gm: sp.Matrix) -> sp.Matrix:
    """``P_V = X (XᵀGX)⁻¹ XᵀG`` for numeric (rational) ``X`` and ``G``."""
    return x * (x.T * gm * x).inv() * x.T * gm


def _stacked(residuals: list[sp.Matrix]) -> sp.Matrix:
    return matrix_residual(sp.Matrix.vstack(*residuals))


def _check_frame(gauge: Gauge) -> list[Check]:
    g, kinds = gauge.generic_element("g")
    th = gauge.blocks
    moved = gauge.act(g, th)
    acted = ActedStage(set(kinds))  # abbreviates every invariant intermediate of the frame
    h_moved = gauge.frame(moved, acted)
    h = gauge.frame(th, LookupStage(acted))
    return [
        Check("frame", "frame is equivariant: h(g·θ) = h(θ) g⁻¹", _difference(h_moved, h * gauge.group.inverse(g))),
        Check("frame", "canonical point is invariant: h(g·θ)·(g·θ) = (h(θ)g⁻¹)·(g·θ) = h(θ)·θ", sp.S.Zero,
              detail="from frame equivariance and the left-action law proved above"),
    ]


def _check_composed_frame_metric(gauge: ComposedGauge, points: int = 2, seed: int = 0) -> list[Check]:
    g, kinds = gauge.generic_element("g")
    th = gauge.blocks
    canon = gauge.flatten(gauge.canonical(th))
    canon_fwd = gauge.flatten(gauge.canonical(gauge.act(g, th)))
    canon_rev = gauge.flatten(gauge.canonical(gauge.act_reversed(g, th)))
    checks = [
        Check("frame", "canonical point invariant under g = g_m⋯g_1: h(g·θ)·(g·θ) = h(θ)·θ",
              _difference(canon_fwd, canon)),
        Check("frame", "canonical point invariant under g = g_1⋯g_m", _difference(canon_rev, canon)),
    ]
    rng = random.Random(seed)
    metric_sym = gauge.metric_at(th)
    res_metric, res_eq = [], []
    for _ in range(points):
        pt = _rational_point(gauge, rng)
        gval = {s: (sp.Rational(rng.randint(1, 9), rng.randint(1, 9)) if k == "positive"
                    else sp.Rational(rng.randint(-9, 9), rng.randint(1, 9))) for s, k in kinds.items()}
        gnum = tuple(e.subs(gval) for e in g)
        theta = gauge.unflatten([pt[s] for s in gauge.coordinates])
        moved = gauge.act(gnum, theta)
        d = gauge.linear_part(gnum)
        gm = metric_sym.subs(pt)
        gm_moved = metric_sym.subs(dict(zip(gauge.coordinates, gauge.flatten(moved))))
        x, x_moved = gauge.generators.subs(pt), gauge.generators_at(moved)
        res_metric.append(d.T * gm_moved * d - gm)
        res_eq.append(d * _projector(x, gm) - _projector(x_moved, gm_moved) * d)
    where = f" (exact, {points} seeded random rational points and group elements)"
    return checks + [
        Check("metric", "metric is G-invariant: D(g)ᵀ G(g·θ) D(g) = G(θ)" + where, _stacked(res_metric)),
        Check("projector", "P_V is equivariant: D(g) P_V(θ) = P_V(g·θ) D(g)" + where, _stacked(res_eq)),
    ] + _projector_identities_at_points(gauge, lambda pt: metric_sym.subs(pt), seed=seed, points=points)


#: factor kinds of the balanced frame (``frames="balanced"``): translations first, rotations last
_TRANSLATIONS, _ROTATIONS = ("ce_shift",), ("head_rotation",)


def _balanced_parts(gauge: ComposedGauge):
    """``(translation, scale, rotation)`` factor indices of a composition (catalogue factors by name; discovered
    ones, ``<layer>.shiftN`` / ``.rotateN`` / ``.scaleN``, by their kind)."""
    def kind(f) -> str:
        stem = f.name.rsplit(".", 1)[-1].rstrip("0123456789")
        return "T" if f.name in _TRANSLATIONS or stem == "shift" else "R" if f.name in _ROTATIONS or stem == "rotate" \
            else "S"

    kinds = [kind(f) for f in gauge.factors]
    return ([i for i, k in enumerate(kinds) if k == w] for w in "TSR")


def _only(gauge: ComposedGauge, element: dict[int, sp.Matrix]) -> tuple[sp.Matrix, ...]:
    """A group element with the given factors' components and the identity elsewhere."""
    return tuple(element.get(i, f.group.identity) for i, f in enumerate(gauge.factors))


def _check_balanced_frame(gauge: ComposedGauge) -> list[Check]:
    """The jointly balanced frame of ``frames="balanced"`` (:mod:`gaugemath.backends.torch.balance`).

    ``C(θ)``: the translations' frames applied (the class-centred point); ``F(θ, s) = ‖s·C(θ)‖²`` for a
    generic element ``s`` of the scaling factors ``A``; the canonical point is ``s*(θ)·C(θ)``, ``s*(θ) =
    argmin_s F(θ, s)``, followed by the rotations' own (proved) frames. Proved here: ``F(a·θ, s) = F(θ, s·a)``
    for ``a ∈ A`` (so ``s*(a·θ) = s*(θ)a⁻¹``), ``F`` invariant under the translations and rotations, the
    rotations commuting with ``A`` and with ``C``, and ``∇²_{log s} F = 4Γ`` at ``s = 1`` (``Γ`` the Gram
    matrix of ``A``'s generators at ``C(θ)``: ``F`` is strictly convex in ``log s`` where they are
    independent, so ``s*`` is unique)."""
    trans, scales, rots = _balanced_parts(gauge)
    if not scales:
        return []
    th = gauge.blocks

    def centred(params: Params) -> Params:
        out = dict(params)
        for i in trans:
            f = gauge.factors[i]
            out.update(f.act(f.frame(gauge._local(f, out)), gauge._local(f, out), simplify=False))
        return out

    def scaled(elem: dict, params: Params) -> Params:
        return gauge.act(_only(gauge, elem), params, simplify=False)

    def objective(params: Params, s: dict) -> sp.Expr:
        flat = gauge.flatten(scaled(s, centred(params)))
        return sum(e**2 for e in flat)

    s_elem, a_elem, prod = {}, {}, {}
    for i in scales:
        f = gauge.factors[i]
        s_elem[i] = f.generic_element(f"s{i}_")[0]
        a_elem[i] = f.generic_element(f"a{i}_")[0]
        prod[i] = f.compose(s_elem[i], a_elem[i])
    base = objective(th, s_elem)
    checks = [Check("balanced frame", "F(a·θ, s) = F(θ, s·a) for a generic scaling a (F = ‖s·C(θ)‖²)",
                    sp.cancel(sp.together(objective(scaled(a_elem, th), s_elem) - objective(th, prod))))]
    for i in trans + rots:
        f = gauge.factors[i]
        g = f.generic_element(f"g{i}_")[0]
        moved = gauge.act(_only(gauge, {i: g}), th, simplify=False)
        checks.append(Check("balanced frame", f"F({f.name}·θ, s) = F(θ, s): the objective is invariant under "
                            f"{f.name}", sp.cancel(sp.together(objective(moved, s_elem) - base))))
    for i in rots:
        f = gauge.factors[i]
        g = _only(gauge, {i: f.generic_element(f"r{i}_")[0]})
        left = gauge.flatten(gauge.act(g, scaled(s_elem, th), simplify=False))
        right = gauge.flatten(scaled(s_elem, gauge.act(g, th, simplify=False)))
        checks.append(Check("balanced frame", f"{f.name} commutes with the scalings: r·(s·θ) = s·(r·θ)",
                            _difference(left, right)))
        left = gauge.flatten(centred(gauge.act(g, th, simplify=False)))
        right = gauge.flatten(gauge.act(g, centred(th), simplify=False))
        checks.append(Check("balanced frame", f"{f.name} commutes with the centring: C(r·θ) = r·C(θ)",
                            _difference(left, right)))
    # Hessian in log-scales at s = 1: 4Γ, Γ the Gram matrix of the scaling generators at C(θ)
    labels = [k for k, lab in enumerate(gauge.labels) if any(lab.startswith(gauge.factors[i].name + ":")
                                                              for i in scales)]
    logs = sp.symbols(f"lambda_0:{len(labels)}", real=True)
    x = gauge.generators_at(centred(th))[:, labels]
    exps, k = {}, 0
    for i in scales:
        diag = s_elem[i].diagonal()
        exps[i] = sp.Matrix([sp.exp(logs[k + j]) for j in range(len(diag))])
        sub = {d: e for d, e in zip(diag, exps[i])}
        exps[i] = s_elem[i].subs(sub)
        k += len(diag)
    f_log = objective(th, exps)
    zero = {v: 0 for v in logs}
    hess = sp.Matrix(len(logs), len(logs), lambda a, b: sp.diff(f_log, logs[a], logs[b]).subs(zero))
    checks.append(Check("balanced frame", "∇²_{log s} F(θ, s) at s = 1 is 4Γ, Γ = XᵀX of the scaling generators at "
                        "C(θ): F is convex in log s, strictly where the orbit directions are independent",
                        (hess - 4 * x.T * x).applyfunc(lambda e: sp.cancel(sp.together(e)))))
    checks.append(Check("balanced frame", "canonical point invariant: s*(g·θ)·C(g·θ) then the rotations' frames "
                        "gives h(θ)·θ for every g", sp.S.Zero,
                        detail="s* is the unique minimiser (strict convexity) and transforms as s*(a·θ) = s*(θ)a⁻¹; "
                               "translations and rotations leave F unchanged and the rotations commute with C and the "
                               "scalings, so the balanced point is invariant under A and T and moves with R, whose "
                               "frame (proved per factor) makes it invariant"))
    return checks


def _check_charges(gauge: GaugeBase) -> list[Check]:
    theta = sp.Matrix(gauge.coordinates)
    n = len(theta)
    gvec = sp.Matrix(sp.symbols(f"g_0:{n}", real=True))
    vvec = sp.Matrix(sp.symbols(f"v_0:{n}", real=True))
    eta, k, beta = sp.symbols("eta k beta", real=True)
    checks = []
    for c in gauge.charges:
        xc = c.M * theta + c.b
        grad = sp.Matrix([sp.diff(c.expr, s) for s in theta])
        checks.append(Check("charge", f"∇Q = 2 X_c for Q[{c.label}]", (grad - 2 * xc).applyfunc(sp.expand)))
        checks.append(Check("charge", f"Q[{c.label}] conserved by gradient flow: ⟨∇Q, ∇L⟩ = 2 Σ_a c_a ⟨X_a, ∇L⟩ = 0",
                            sp.S.Zero, detail="linear in the orthogonality identities ⟨∇L, X_a⟩ = 0 proved above"))
        # heavy-ball with coupled weight decay: v' = βv - η(g + kθ), θ' = θ + v'; constraint ⟨g, X_c(θ)⟩ = 0
        v_new = beta * vvec - eta * (gvec + k * theta)
        th_new = theta + v_new
        xc_new = c.M * th_new + c.b
        j, j_new = (vvec.T * xc)[0], (v_new.T * xc_new)[0]
        q_new = (th_new.T * c.M * th_new)[0] + 2 * (c.b.T * th_new)[0]
        constraint = (gvec.T * xc)[0]
        drive = beta * j - eta * k * (theta.T * xc)[0]
        kinetic = (v_new.T * c.M * v_new)[0]
        checks.append(Check("charge", f"J' = βJ - ηk⟨θ, X_c⟩ + v'ᵀM_c v' (mod ⟨g, X_c⟩ = 0) for Q[{c.label}]",
                            sp.expand(j_new - (drive + kinetic) + eta * constraint)))
        checks.append(Check("charge", f"Q' = Q + 2(βJ - ηk⟨θ, X_c⟩) + v'ᵀM_c v' (mod ⟨g, X_c⟩ = 0) for Q[{c.label}]",
                            sp.expand(q_new - (c.expr + 2 * drive + kinetic) + 2 * eta * constraint)))
    if not gauge.charges:
        checks.append(Check("charge", "no generator combination is symmetric: no quadratic/linear charges", sp.S.Zero,
                            detail="skew generators give only the flow constraint ⟨θ̇, X_a(θ)⟩ = 0"))
    return checks


def _check_extras(gauge: GaugeBase) -> list[Check]:
    """Gauge-specific derivations: RoPE commutant, ε > 0 negative control for producers."""
    from .catalogue import rope_commutant

    checks = []
    if gauge.name == "head_rotation" and isinstance(gauge, Gauge) and gauge.group.name.startswith("SO(2)"):
        d = gauge.group.identity.rows
        derived = rope_commutant(d)
        basis = gauge.group.basis
        flat = lambda ms: sp.Matrix.hstack(*[m.reshape(d * d, 1) for m in ms])  # noqa: E731
        rank_union = flat(list(derived) + list(basis)).rank()
        checks.append(Check("derivation",
                            "RoPE commutant in so(d_head) (distinct ω_j) = span of the per-plane generators",
                            sp.Integer(abs(rank_union - len(basis)) + abs(len(derived) - len(basis))),
                            detail=f"dim commutant = {len(derived)}, planes = {len(basis)}"))
    if gauge.name == "norm_scale" and "W_p" in gauge.blocks:
        # non-zero is shown at one rational point (ε = 1/10, α = 2), evaluated to 50 digits
        rng = random.Random(1)
        theta = gauge.unflatten(list(_rational_point(gauge, rng).values()))
        inputs = {k: m.applyfunc(lambda _: sp.Rational(rng.randint(-9, 9), rng.randint(1, 5)))
                  for k, m in gauge.model.inputs.items()}
        g, kinds = gauge.generic_element("g")
        gnum = g.subs({s: sp.Integer(2) for s in kinds})
        eps = sp.Rational(1, 10)
        ident = lambda e: e  # noqa: E731
        fwd = gauge.model.forward
        moved = fwd(gauge.act(gnum, theta), inputs, ident, eps)[0]
        value = sp.N(moved - fwd(theta, inputs, ident, eps)[0], 50)
        checks.append(Check("negative control",
                            "with ε > 0 the producer scale is NOT an exact symmetry (value at a rational θ and "
                            "input, ε = 1/10, α = 2, to 50 digits)", value, expect_zero=False))
    return checks


def check_groups(gauge: GaugeBase) -> list:
    """The check functions that :func:`prove` runs on ``gauge``, in certificate order."""
    if isinstance(gauge, Gauge):
        return [_check_action, _check_invariance, _check_orthogonality, _check_brackets, _check_metric_projectors,
                _check_frame, _check_charges, _check_extras]
    return [_check_invariance, _check_orthogonality, _check_brackets, _check_composed_frame_metric,
            _check_balanced_frame, _check_charges, _check_extras]


def prove(gauge: GaugeBase, variant: str = "default") -> Certificate:
    """Run every check on ``gauge``; returns a :class:`Certificate` (does not raise)."""
    t0 = time.perf_counter()
    cert = Certificate(gauge, variant)
    for check in check_groups(gauge):
        cert.checks += check(gauge)
    cert.seconds = time.perf_counter() - t0
    return cert
