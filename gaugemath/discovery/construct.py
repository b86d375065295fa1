"""From discovered generators to a gauge the core proves: group, action and canonical frame.

Supported (each per-unit family of :mod:`gaugemath.discovery.patterns` becomes one factor):

* **scale** families: ``(R_{>0})^m`` acting by ``θ_i ↦ α_k^{e_i} θ_i`` (integer exponents ``e``).
  Frame: *anchor* on the largest slice only this family moves (``private``), ``α_k = ‖θ_anchor‖^{-1/e}`` so
  that ``‖α^e θ_anchor‖ = 1``. Families are ordered by peeling: a family whose anchor is private with
  respect to every family not yet canonicalised goes first; its frame is then invariant under the
  rest (they commute and do not touch the anchor), so the composed frame is equivariant. If no
  family can be peeled, there is no anchor frame and :class:`GaugeError` says so.
* **shift** families: ``(R^m, +)`` acting by ``θ ↦ θ + Σ_k v_k b_k``; frame ``v(θ) = −Γ⁻¹Bᵀθ``
  (``B = [b_k]``, ``Γ = BᵀB``), so ``v(θ + Bw) = v(θ) − w``: centring.
* **rotate** families: ``SO(2)^m`` acting on row pairs, ``θ ↦ θ + Σ_k ((c_k − 1)P_k + s_k A_k) θ``
  (``A_k² = −P_k``); frame: the angle of the first rotated pair, as ``gaugemath.catalogue``'s RoPE frame.

Factors are composed in the order scale (peeled) → rotate → shift, as in the catalogue's
transformer block, and the core proves the composition. ``mix`` generators (``gl(h)``, value–output
mixing, …) have no canonical frame here: :func:`build_gauge` refuses them by name, and the algebra's
own proofs, brackets and charges remain available.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

from ..errors import GaugeError
from ..exact import norm
from ..gauge import ComposedGauge, Gauge, GaugeBase, Params, ReferenceModel
from ..groups import plane_rotations, positive_scalings, translations
from .layer import Layer
from .patterns import Family


def restricted_model(lay: Layer, blocks: Params) -> ReferenceModel:
    """The layer's model with only ``blocks`` as parameters; the other parameter blocks become inputs."""
    others = {b: m for b, m in lay.params.items() if b not in blocks}
    names = list(lay.params)

    def forward(p, inp, stage):
        full = {b: (p[b] if b in p else inp[b]) for b in names}
        return lay.forward(full, {k: inp[k] for k in lay.inputs}, stage)

    return ReferenceModel(description=lay.description or f"layer '{lay.name}'", inputs={**lay.inputs, **others},
                          forward=forward, generic_loss=lay.loss == "outputs", assumptions=lay.assumptions,
                          constants=dict(lay.constants))


def _touched(lay: Layer, gens: Sequence[tuple[sp.Matrix, sp.Matrix]]) -> Params:
    coords = lay.coordinates
    hit = {i for a, b in gens for i in range(len(coords)) if any(e != 0 for e in a.row(i)) or b[i] != 0}
    hit |= {j for a, _ in gens for j in range(len(coords)) if any(e != 0 for e in a.col(j))}
    hit_syms = {coords[i] for i in hit}
    return {name: m for name, m in lay.params.items() if set(m) & hit_syms}


def _local(blocks: Params, lay: Layer, vec: sp.Matrix) -> list:
    """Entries of a layer-wide vector on the coordinates of ``blocks`` (block order)."""
    pos = {s: i for i, s in enumerate(lay.coordinates)}
    return [vec[pos[s]] for m in blocks.values() for s in m]


def _unflatten(blocks: Params, vec) -> Params:
    """Split a flat vector over ``blocks`` (row-major, in block order)."""
    res, i = {}, 0
    for b, ref in blocks.items():
        res[b] = sp.Matrix(ref.rows, ref.cols, list(vec[i : i + ref.rows * ref.cols]))
        i += ref.rows * ref.cols
    return res


def _scale_gauge(lay: Layer, fam: Family, gens, private: set, name: str) -> Gauge:
    blocks = _touched(lay, [gens[g] for g in fam.members])
    coords = [s for m in blocks.values() for s in m]
    expo = [_local(blocks, lay, gens[g][0].diagonal().T) for g in fam.members]
    anchors = []
    for k, e in enumerate(expo):
        own = [i for i, c in enumerate(e) if c != 0 and coords[i] in private]
        if not own:
            raise GaugeError(name, None, f"scale generator {k} of '{fam.describe()}' has no private anchor slice")
        groups: dict = {}
        for i in own:
            groups.setdefault(e[i], []).append(i)
        first = max(groups, key=lambda c: (len(groups[c]), -own.index(groups[c][0])))
        anchors.append((groups[first], first))
    m = len(fam.members)

    def action(g, p):
        flat = [x for b in blocks for x in p[b]]
        return _unflatten(blocks, [x * sp.Mul(*[g[k, k] ** expo[k][i] for k in range(m)]) for i, x in enumerate(flat)])

    def frame(p):
        flat = [x for b in blocks for x in p[b]]
        return sp.diag(*[norm([flat[i] for i in idx]) ** sp.Rational(-1, e) for idx, e in anchors])

    return Gauge(name, summary=fam.describe(), group=positive_scalings(m), blocks=blocks, action=action,
                 frame=frame, frame_name="anchor: unit norm on a private slice", model=restricted_model(lay, blocks))


def _shift_gauge(lay: Layer, fam: Family, gens, name: str) -> Gauge:
    blocks = _touched(lay, [gens[g] for g in fam.members])
    bs = sp.Matrix.hstack(*[sp.Matrix(_local(blocks, lay, gens[g][1])) for g in fam.members])
    m = bs.cols
    gram_inv = (bs.T * bs).inv()

    def action(g, p):
        flat = sp.Matrix([x for b in blocks for x in p[b]])
        return _unflatten(blocks, flat + bs * sp.Matrix(g[0, 1:]).T)

    def frame(p):
        v = -gram_inv * bs.T * sp.Matrix([x for b in blocks for x in p[b]])
        h = sp.eye(m + 1)
        for j in range(m):
            h[0, j + 1] = v[j]
        return h

    return Gauge(name, summary=fam.describe(), group=translations(m), blocks=blocks, action=action, frame=frame,
                 frame_name="centre: v(θ) = −Γ⁻¹Bᵀθ", model=restricted_model(lay, blocks))


def _rotate_gauge(lay: Layer, fam: Family, gens, name: str) -> Gauge:
    blocks = _touched(lay, [gens[g] for g in fam.members])
    pos = {s: i for i, s in enumerate(lay.coordinates)}
    idx = [pos[s] for m in blocks.values() for s in m]
    mats, pairs = [], []
    for g in fam.members:  # each generator oriented so that it turns the plane's first row into its second:
        a = gens[g][0].extract(idx, idx)  # then the action is left multiplication [[c, -s], [s, c]]·rows
        i = next(i for i in range(a.rows) if any(a[:, i]))
        j = next(j for j in range(a.rows) if a[j, i] != 0)
        mats.append(a if a[j, i] > 0 else -a)  # (a generator's sign is a choice of basis: same group)
        pairs.append((i, j))
    projs = [-(a * a) for a in mats]

    def action(g, p):
        flat = sp.Matrix([x for b in blocks for x in p[b]])
        out = flat
        for k, (a, pk) in enumerate(zip(mats, projs)):
            c, s = g[2 * k, 2 * k], g[2 * k + 1, 2 * k]
            out = out + ((c - 1) * pk + s * a) * flat
        return _unflatten(blocks, out)

    def frame(p):
        flat = [x for b in blocks for x in p[b]]
        hs = []
        for i, j in pairs:
            u1, u2 = flat[i], flat[j]
            hs.append(sp.Matrix([[u1, u2], [-u2, u1]]) / norm([u1, u2]))
        return sp.diag(*hs)

    return Gauge(name, summary=fam.describe(), group=plane_rotations(len(mats)), blocks=blocks, action=action,
                 frame=frame, frame_name="plane angle of the first rotated pair", model=restricted_model(lay, blocks))


def _peel(lay: Layer, fams: list[Family], gens) -> list[tuple[Family, set]]:
    """Scale families in an order where each has an anchor private w.r.t. all later ones."""
    coords = lay.coordinates
    support = {f: {coords[i] for g in f.members for i in range(len(coords)) if gens[g][0][i, i] != 0} for f in fams}
    order, left = [], list(fams)
    while left:
        for f in left:
            others = set().union(*(support[o] for o in left if o is not f))
            private = support[f] - others
            per_member = [{coords[i] for i in range(len(coords)) if gens[g][0][i, i] != 0} & private
                          for g in f.members]
            if all(per_member):
                order.append((f, private))
                left.remove(f)
                break
        else:
            raise GaugeError(lay.name, None, "no anchor frame: the scale families "
                             + "; ".join(f"'{f.describe()}'" for f in left)
                             + " share every slice (no family moves a slice the others leave fixed)")
    return order


def build_gauge(lay: Layer, fams: Sequence[Family], gens: Sequence[tuple[sp.Matrix, sp.Matrix]],
                labels: Sequence[str]) -> GaugeBase:
    """The gauge of the algebra spanned by ``gens`` (see the module docstring)."""
    mix = [f for f in fams if f.kind == "mix"]
    if mix:
        names = ", ".join(labels[g] for f in mix for g in f.members)
        raise GaugeError(lay.name, None, f"generators {names} are not of a per-unit scale/shift/rotation form (e.g. "
                         "gl(h) mixing); gaugemath has no canonical frame for them, so no gauge/optimizer: proofs, "
                         "brackets and charges stay available on the algebra; use algebra.frameable() for the rest")
    factors: list[Gauge] = []
    for i, (f, private) in enumerate(_peel(lay, [f for f in fams if f.kind == "scale"], gens)):
        factors.append(_scale_gauge(lay, f, gens, private, f"{lay.name}.scale{i}"))
    for i, f in enumerate(f for f in fams if f.kind == "rotate"):
        factors.append(_rotate_gauge(lay, f, gens, f"{lay.name}.rotate{i}"))
    for i, f in enumerate(f for f in fams if f.kind == "shift"):
        factors.append(_shift_gauge(lay, f, gens, f"{lay.name}.shift{i}"))
    if not factors:
        raise GaugeError(lay.name, None, "the algebra is zero: there is no gauge to build")
    if len(factors) == 1:
        return factors[0]
    blocks: Params = {}
    for f in factors:
        blocks.update(f.blocks)
    return ComposedGauge(lay.name, summary=f"discovered gauges of layer '{lay.name}'", factors=factors,
                         model=restricted_model(lay, {b: lay.params[b] for b in lay.params if b in blocks}))
