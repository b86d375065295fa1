"""Which families may share a tensor, and proposals as specs: shared by the torch and JAX binders.

:data:`PROVED_OVERLAPS` lists the overlaps of two families on one parameter whose composite frame is
proved (``proofs/transformer_block.md``); :func:`compose` keeps the specs whose overlaps are among
them and refuses the rest, naming both families. :func:`spec_of` turns a detector
:class:`~gaugemath.structure.detect.Proposal` into a :class:`~gaugemath.backends._spec.GaugeSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gaugemath.structure.detect import Proposal, Refusal

from ._spec import ORDER, GaugeSpec, TensorView

#: Overlaps of two families on one parameter whose composite frame is proved (``proofs/transformer_block.md``):
#: (family key prefix, axis) pairs, the first canonicalised first (:data:`~gaugemath.backends._spec.ORDER`).
PROVED_OVERLAPS = (
    (("norm_scale", "cols"), ("head_rotation", "rows")),
    (("norm_scale", "cols"), ("relu_rescale.anchor", "rows")),
    (("norm_scale", "cols"), ("swiglu_rescale.anchor", "rows")),
    (("norm_scale", "cols"), ("ce_shift", "cols")),
)

#: Overlaps proved for the jointly balanced frame (``frames="balanced"``, ``proofs/transformer_block.md``):
#: any row rescale with any column rescale of one matrix (solved jointly), a column rescale with the
#: class-axis shift (centred first) or with a row rotation (column norms are rotation-invariant).
BALANCED_OVERLAPS = PROVED_OVERLAPS + tuple(
    ((a, "cols"), (b, "rows")) for a in ("norm_scale", "relu_rescale", "swiglu_rescale")
    for b in ("relu_rescale", "swiglu_rescale")) + (
    (("relu_rescale", "cols"), ("ce_shift", "cols")),
    (("swiglu_rescale", "cols"), ("ce_shift", "cols")),
    (("relu_rescale", "cols"), ("head_rotation", "rows")),
    (("swiglu_rescale", "cols"), ("head_rotation", "rows")),
)


def _axes(spec: GaugeSpec, key: str, families: dict) -> dict[str, str]:
    """parameter → axis the family acts on (``rows``/``cols``/``all``)."""
    fam = families[key]
    out = {}
    for s in fam.slices:
        given = spec.roles.get(s.role)
        for v in [] if given is None else [given] if isinstance(given, (str, TensorView)) else given:
            name = v.param if isinstance(v, TensorView) else v
            out[name] = "rows" if fam.kind in ("plane", "head") else s.axis
    return out


def spec_of_family(name: str, specs: Sequence[GaugeSpec]) -> GaugeSpec:
    """The spec a bound family came from (families are named ``spec.name``, or their key)."""
    return next(s for s in specs if name == s.name or (not s.name and name in _keys(s)))


def _keys(spec: GaugeSpec) -> list[str]:
    if spec.family == "ce_shift":
        return ["ce_shift.W"] + (["ce_shift.b"] if "b" in spec.roles else [])
    return [spec.family]


def _proved(a: tuple[str, str], b: tuple[str, str], balanced: bool = False) -> bool:
    return any(a[0].startswith(x[0]) and a[1] == x[1] and b[0].startswith(y[0]) and b[1] == y[1]
               or b[0].startswith(x[0]) and b[1] == x[1] and a[0].startswith(y[0]) and a[1] == y[1]
               for x, y in (BALANCED_OVERLAPS if balanced else PROVED_OVERLAPS))


def compose(specs: Sequence[GaugeSpec], families: dict, frames: bool = True,
            balanced: bool = True) -> tuple[list[GaugeSpec], list[Refusal]]:
    """Keep the specs whose overlaps with the specs kept before them are proved compositions.

    Taken in canonicalisation order (:data:`ORDER`, then as given); a spec whose parameter another
    kept spec acts on, in a pattern not in :data:`PROVED_OVERLAPS` (``balanced``, the jointly balanced
    frame: :data:`BALANCED_OVERLAPS`), is refused with both named.
    ``frames``: a unit rescale that overlaps nothing is given the balance frame (the anchor frame
    otherwise); explicit specs keep the frame they name (with ``balanced`` the scale families' own
    frames are not used).
    """
    unknown = [s for s in specs if any(k not in families for k in _keys(s))]
    if unknown:
        return list(specs), []  # resolve() names the unknown family
    ranked = sorted(specs, key=lambda s: ORDER.index(families[_keys(s)[0]].gauge))
    kept: list[tuple[GaugeSpec, dict[str, str]]] = []
    refusals: list[Refusal] = []
    for spec in ranked:
        axes = _axes(spec, _keys(spec)[0], families)
        for k in _keys(spec)[1:]:
            axes.update(_axes(spec, k, families))
        clash = None
        for other, oaxes in kept:
            for name in set(axes) & set(oaxes):
                if not _proved((other.family, oaxes[name]), (spec.family, axes[name]), balanced):
                    clash = (other, name)
                    break
            if clash:
                break
        if clash:
            other, name = clash
            refusals.append(Refusal(families[_keys(spec)[0]].gauge, spec.name,
                                    f"{name} is also acted on by {other.name} ({other.family}); the composite frame "
                                    f"of {other.family} ({oaxes[name]}) and {spec.family} "
                                    f"({axes[name]}) on one tensor is not proved"))
            continue
        kept.append((spec, axes))
    out = []
    for spec, axes in kept:
        unit = spec.family.split(".")[0] in ("relu_rescale", "swiglu_rescale")
        if frames and unit and spec.family.endswith(".anchor"):
            if not any(o is not spec and set(axes) & set(oa) for o, oa in kept):
                spec = replace(spec, family=spec.family.replace(".anchor", ".balance"))
        out.append(spec)
    return out, refusals


def spec_of(p: Proposal) -> GaugeSpec:
    """The proposal as a :class:`GaugeSpec`: a view that is a whole stored parameter is its name; a
    norm's consumers are a list, other single-tensor roles a name (the explicit specs' convention)."""

    def simple(role: str, vs: list[TensorView]):
        out = [v.param if v.rows is None and not v.transpose else v for v in vs]
        return out if len(out) > 1 or (role == "W" and p.kind.startswith("norm_scale")) else out[0]

    roles: dict[str, Any] = {r: simple(r, vs) for r, vs in p.roles.items()}
    if p.kind == "unit_rescale":
        if "b_in" in roles:
            return GaugeSpec("relu_rescale.anchor", roles, name=p.name)
        return GaugeSpec("swiglu_rescale.anchor", {"W_up": roles["W_in"], "W_down": roles["W_out"]}, name=p.name)
    name = f"{p.name}: gain" if p.kind.startswith("norm_scale") else p.name
    return GaugeSpec(p.kind, roles, name=name, d_head=p.d_head)




def unique_names(specs: Sequence[GaugeSpec]) -> list[GaugeSpec]:
    """Specs with distinct names (the check and the report refer to families by name): a name shared by
    several specs becomes ``first module → last module`` of each one's parameters, then ``#k`` if needed."""
    specs = list(specs)
    counts: dict[str, int] = {}
    for s in specs:
        counts[s.name] = counts.get(s.name, 0) + 1
    out, seen = [], {}
    for s in specs:
        name = s.name
        if name and counts[name] > 1:
            params = [v.param if isinstance(v, TensorView) else v for vs in s.roles.values()
                      for v in ([vs] if isinstance(vs, (str, TensorView)) else vs)]
            mods = list(dict.fromkeys(p.rsplit(".", 1)[0] if "." in p else p for p in params))
            name = f"{mods[0]}→{mods[-1]}" if len(mods) > 1 else mods[0]
            if s.name.endswith(": gain") and not name.endswith(": gain"):
                name += ": gain"
        seen[name] = seen.get(name, 0) + 1
        out.append(replace(s, name=name if seen[name] == 1 else f"{name}#{seen[name]}"))
    return out
