"""Backend code for a discovered gauge: the same derivation as ``gaugemath codegen``, then loadable families.

Each factor of :meth:`LieAlgebra.to_gauge` is an orbit family (scale / translate / plane). Its
frame, Gram diagonal and vertical coordinate are read off the gauge and proved by
:func:`gaugemath.codegen.family_specs`, at every discovered width; the formulas must agree across
widths (as the catalogue's are proved at two). :func:`render` prints the module for ``torch`` or
``jax`` with the codegen printer; :func:`load_families` executes it into
:class:`gaugemath.backends._family.Family` objects, and :func:`torch_binding` binds them to a
model's parameters for :class:`gaugemath.backends.torch.DDCAdam`.

The backends apply a scale coordinate with exponent ``±1`` only; a family with another exponent
(e.g. the ``relu2`` rescale ``(α r, c/α²)``) is refused here with a clear error (its proofs and
charges are still available on the algebra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import sympy as sp

from .. import codegen
from ..errors import GaugeError
from ..gauge import ComposedGauge, Gauge
from .algebra import LieAlgebra

_KIND = {"scale": "scale", "shift": "translate", "rotate": "plane"}


@dataclass(frozen=True)
class Support:
    """Whether the backends (DDCAdam, DDCMuon in torch and JAX) can apply a discovered family, and why not."""

    family: str
    backend: bool
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.family}: " + ("bound by the backends" if self.backend else f"not bound: {self.reason}")


class _Shape:
    """A stand-in for a bound family, built from a discovered family's signature: what
    :class:`gaugemath.backends._coupling.Coupling` reads (kind, slices by block, units)."""

    def __init__(self, index: int, fam, blocks: list[str]):
        self.kind = _KIND[fam.kind]
        self.name = fam.describe()
        self.units = len(fam.members)
        self.family = SimpleNamespace(gauge=f"discovered family {index}")
        self._members = [(SimpleNamespace(axis="rows" if axis == "planes" else axis, role=block), blocks.index(block))
                         for block, _, axis, _ in fam.signature]

    def members(self):
        return self._members


def support(alg: LieAlgebra) -> list[Support]:
    """Per family of ``alg`` (in order), whether the backends apply it.

    Refused, with what is missing: mixing algebras (``gl``/``so`` actions with no per-unit form: no canonical
    frame); scale exponents other than ±1 (the ``relu2`` rescale ``(αr, c/α²)``: the backends apply ``e^{±a}``
    only); translations that move entries by other multiples than 1 of the unit's coordinate; a family that
    overlaps an earlier supported one in a way the joint projector does not solve (two scalings of one slice,
    e.g. ReGLU's gate and up against ``W_down[:, k]``, or a per-unit output scale against the unit rescale):
    :class:`gaugemath.backends._coupling.Coupling` decides this exactly as it does for a binding (of two that
    cannot be bound together, the one with more generators is kept)."""
    from gaugemath.backends._coupling import Coupling

    blocks = list(alg.layer.params)
    out: dict[int, Support] = {}
    kept: list[_Shape] = []
    # of two families that cannot be bound together the one with more generators is kept (a norm gain over
    # the whole-tensor Q/K rescale), ties in the algebra's order; the report is in the algebra's order
    for i in sorted(range(len(alg.families)), key=lambda i: (-len(alg.families[i].members), i)):
        fam = alg.families[i]
        what = fam.describe()
        if fam.kind == "mix":
            out[i] = Support(what, False, "no per-unit form, so no canonical frame (a mixing algebra, e.g. gl(h) "
                               "of a linear chain or GL(d_head) of value-output): proofs and charges only")
            continue
        powers = sorted({c for _, kind, _, c in fam.signature if kind == "scale"} - {1, -1})
        if powers:
            out[i] = Support(what, False, f"scale exponent(s) {[str(p) for p in powers]}: the backends apply a "
                               "per-unit scale with exponent ±1 only")
            continue
        shifts = sorted({c for _, kind, _, c in fam.signature if kind == "shift"} - {1})
        if shifts:
            out[i] = Support(what, False, f"translation coefficient(s) {[str(c) for c in shifts]}: the backends "
                               "translate each entry of a unit by the unit's one coordinate")
            continue
        trial = kept + [_Shape(i, fam, blocks)]
        try:
            Coupling(trial, blocks, balanced=True)
        except GaugeError as e:
            out[i] = Support(what, False, "overlaps a supported family in a way the joint projector does not "
                               f"solve ({e.reason})")
            continue
        kept = trial
        out[i] = Support(what, True)
    return [out[i] for i in range(len(alg.families))]


def bindable(alg: LieAlgebra) -> LieAlgebra:
    """The sub-algebra of the families :func:`support` accepts (what ``bind(model, discovered=alg)`` binds)."""
    def supported(a: LieAlgebra) -> list[int]:
        return sorted(g for f, s in zip(a.families, support(a)) if s.backend for g in f.members)

    ok = supported(alg)
    if not ok:
        raise GaugeError(alg.layer.name, None, "no discovered family can be applied by the backends: "
                         + "; ".join(str(s) for s in support(alg)))
    sub = alg.subalgebra(ok)
    sub.instances = [sub if inst is alg else inst.subalgebra(supported(inst)) for inst in (alg.instances or [alg])]
    return sub


def _factors(alg: LieAlgebra) -> list[Gauge]:
    g = alg.to_gauge()
    return list(g.factors) if isinstance(g, ComposedGauge) else [g]


def _check_exponents(gauge: Gauge) -> None:
    if not gauge.name.split(".")[-1].startswith("scale"):
        return
    g, _ = gauge.generic_element("g")
    moved = gauge.act(g, gauge.blocks)
    for b, m in gauge.blocks.items():
        for e, e2 in zip(m, moved[b]):
            powers = [sp.degree(sp.cancel(e2 / e), s) if sp.cancel(e2 / e).is_polynomial(s) else
                      -sp.degree(sp.cancel(e / e2), s) for s in g.diagonal()]
            if any(p not in (-1, 0, 1) for p in powers):
                raise GaugeError(gauge.name, b, f"scale exponents {powers}: the backends apply a per-unit scale "
                                 "with exponent ±1 only; proofs and charges of this family are available, "
                                 "backend code is not")


def family_specs(alg: LieAlgebra) -> list[codegen.FamilySpec]:
    """Proved :class:`gaugemath.codegen.FamilySpec` s of every factor, identical at every discovered width."""
    per_width = []
    for inst in alg.instances or [alg]:
        specs = []
        for f in _factors(inst):
            _check_exponents(f)
            kind = _KIND[f.name.split(".")[-1].rstrip("0123456789")]
            specs += codegen.family_specs(f, f"{alg.layer.name}.{f.name.split('.')[-1]}", kind)
        per_width.append(specs)
    first = per_width[0]
    for other in per_width[1:]:
        for a, b in zip(first, other, strict=True):
            if (a.slices, a.frame, a.gram, a.coords) != (b.slices, b.frame, b.gram, b.coords):
                raise GaugeError(a.gauge, None, f"backend family {a.key} differs between the discovered widths")
    if len(per_width) > 1:
        for a in first:
            a.checks.append(f"identical formulas and slices at all {len(per_width)} discovered widths")
    return first


def render(alg: LieAlgebra, library: str = "torch", source: str | None = None) -> str:
    """The generated backend module for ``library`` (``"torch"`` or ``"jax"``), deterministic text, of the
    families the backends apply (:func:`bindable`). ``source``: what ``gaugemath discover`` was given (named in
    the module's docstring, with the command that checks it). The module imports the runtime absolutely, so it
    imports from any directory: ``FAMILIES`` is its ``{key: Family}``."""
    return codegen.render(family_specs(bindable(alg)), library, discovered=source or alg.layer.name)


def load_families(alg: LieAlgebra, library: str = "torch") -> dict:
    """``{key: Family}`` from the generated module (executed with an absolute import of the runtime).

    Cached on ``alg`` per library (the derivation and its proofs run once)."""
    cache = alg.__dict__.setdefault("_backend_families", {})
    if library in cache:
        return dict(cache[library])
    text = codegen.render(family_specs(alg), library, discovered=alg.layer.name)
    namespace: dict = {}
    exec(compile(text, f"<discovered {alg.layer.name} ({library})>", "exec"), namespace)
    cache[library] = dict(namespace["FAMILIES"])
    return dict(cache[library])


def discovered_specs(alg: LieAlgebra, library: str, names: Mapping | None = None) -> tuple[list, dict]:
    """``(specs, families)`` for a backend's ``resolve``: one :class:`~gaugemath.backends.GaugeSpec` per family of
    ``alg`` the backends apply (:func:`bindable`), its roles (the layer's blocks) mapped to ``names[block]`` —
    a parameter name, leaf path or :class:`~gaugemath.backends.TensorView` (default: the module parameters the
    blocks were traced from, ``alg.layer.parameters``) — and the generated families of ``library`` by key.

    What ``bind(model, discovered=alg)`` (torch) and ``gaugemath.backends.jax.bind(params, discovered=alg)``
    bind: the same resolution, layout and model check as catalogue specs."""
    from gaugemath.backends._spec import GaugeSpec

    names = dict(alg.layer.parameters if names is None else names)
    sub = bindable(alg)
    fams = load_families(sub, library)
    specs = []
    for key, fam in fams.items():
        missing = [s.role for s in fam.slices if s.role not in names]
        if missing:
            raise GaugeError(fam.gauge, missing[0], "no parameter given for this block: pass names={block: "
                             "parameter} (a layer not traced from a module names none)")
        specs.append(GaugeSpec(key, {s.role: names[s.role] for s in fam.slices}, name=key))
    return specs, fams


def torch_binding(alg: LieAlgebra, model, names: Mapping[str, str]):
    """A :class:`gaugemath.backends.torch.Binding` of the discovered families to ``model``'s parameters.

    ``names`` maps each layer block (e.g. ``"W_in"``) to a parameter name of ``model`` (e.g.
    ``"fc_in.weight"``); weights follow the layer's convention (``y = W x``, as ``nn.Linear``).
    Families are bound in the order their composed frame was proved.
    """
    from gaugemath.backends.torch.binding import Binding
    from gaugemath.backends.torch.orbits import BoundFamily

    named = dict(model.named_parameters())
    fams = load_families(alg, "torch")
    order: list[str] = []
    bound = []
    for key, fam in fams.items():
        roles, units = {}, set()
        for s in fam.slices:
            if s.role not in names:
                raise GaugeError(fam.gauge, s.role, f"no model parameter given for block '{s.role}' (names=)")
            pname = names[s.role]
            if pname not in named:
                raise GaugeError(fam.gauge, pname, "no such parameter in the model")
            t = named[pname]
            vector = alg.layer.params[s.role].cols == 1
            if t.dim() != (1 if vector else 2) and not (vector and t.dim() == 2 and t.shape[1] == 1):
                raise GaugeError(fam.gauge, pname, f"shape {tuple(t.shape)} does not fit block '{s.role}' "
                                 f"({'a vector' if vector else 'a matrix'} in the layer)")
            if pname not in order:
                order.append(pname)
            roles[s.role] = [order.index(pname)]
            units.add(t.shape[0] // 2 if fam.kind == "plane" else
                      {"rows": t.shape[0], "cols": t.shape[-1], "all": 1}[s.axis])
        if len(units) != 1:
            raise GaugeError(fam.gauge, key, f"roles disagree on the number of units {sorted(units)}")
        bound.append(BoundFamily(fam, key, roles, units.pop()))
    return Binding([(n, named[n]) for n in order], bound)
