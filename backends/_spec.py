"""Binding specs and their resolution against named, shaped leaves: shared by the backends.

:func:`resolve` turns :class:`GaugeSpec` s into ordered family bindings (role → leaf indices,
number of units), with every shape check that does not depend on the array library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gaugemath.errors import GaugeError

#: order of the composed canonical frame, as proved in ``proofs/transformer_block.md``
ORDER = ("norm_scale", "head_rotation", "relu_rescale", "swiglu_rescale", "ce_shift")


@dataclass
class GaugeSpec:
    """An explicit binding: ``family`` (a key of ``FAMILIES``, e.g. ``"relu_rescale.balance"``,
    or ``"ce_shift"`` for both shift families) and ``roles`` mapping each role to a parameter name
    or a list of names (several consumers of one norm). ``d_head`` for ``head_rotation.norope``.
    """

    family: str
    roles: dict[str, str | Sequence[str]]
    name: str = ""
    d_head: int = 0


@dataclass(frozen=True)
class Resolved:
    """One family binding: generated family, display name, role → leaf indices, units, d_head."""

    family: object
    name: str
    roles: dict
    units: int
    d_head: int = 0


def _units(key: str, family, role: str, shape: tuple[int, ...], d_head: int) -> int:
    s = family.slice(role)
    if family.kind == "plane":
        return shape[0] // 2
    if family.kind == "head":
        return shape[0] // d_head
    if s.axis == "rows":
        return shape[0]
    if s.axis == "cols":
        if len(shape) != 2:
            raise GaugeError(family.gauge, role, f"needs a matrix for a column slice, got shape {shape}")
        return shape[1]
    return 1


def resolve(specs: Sequence[GaugeSpec], shapes: dict[str, tuple[int, ...]], families: dict,
            what: str = "parameter") -> tuple[list[str], list[Resolved]]:
    """Leaf names in binding order and the resolved family bindings (sorted by :data:`ORDER`)."""
    order: list[str] = []
    out: list[Resolved] = []
    keyed = []
    for spec in specs:
        keys = [k for k in families if k == spec.family or k.startswith(spec.family + ".")]
        if spec.family == "ce_shift":
            keys = ["ce_shift.W", "ce_shift.b"]
        if not keys or (len(keys) > 1 and spec.family != "ce_shift"):
            raise GaugeError(spec.family, None, f"unknown gauge family; choose from {sorted(families)}")
        for key in keys:
            keyed.append((spec, key))
    keyed.sort(key=lambda sk: ORDER.index(families[sk[1]].gauge))
    for spec, key in keyed:
        fam = families[key]
        roles: dict[str, list[int]] = {}
        units = set()
        for s in fam.slices:
            given = spec.roles.get(s.role)
            if given is None:
                if s.role == "bias" and fam.gauge == "norm_scale":
                    continue
                if fam.gauge == "ce_shift" and key.endswith(".b") and "b" not in spec.roles:
                    break
                raise GaugeError(fam.gauge, s.role, f"role missing from the binding of {spec.name or key}")
            names = [given] if isinstance(given, str) else list(given)
            if fam.kind in ("plane", "head") and len(names) != 1:
                raise GaugeError(fam.gauge, s.role, "rotation roles bind exactly one tensor")
            for n in names:
                if n not in shapes:
                    raise GaugeError(fam.gauge, n, f"no such {what} in the model")
                shape = tuple(shapes[n])
                if fam.kind == "plane" and (len(shape) != 2 or shape[0] % 2):
                    raise GaugeError(fam.gauge, n, f"shape {shape}: RoPE planes need an even number of rows")
                if fam.kind == "head" and (spec.d_head <= 0 or shape[0] % spec.d_head):
                    raise GaugeError(fam.gauge, n, f"shape {shape}: rows do not split into heads of "
                                     f"d_head={spec.d_head}")
                units.add((_units(key, fam, s.role, shape, spec.d_head), n))
                if n not in order:
                    order.append(n)
                roles.setdefault(s.role, []).append(order.index(n))
        else:
            if len({u for u, _ in units}) > 1:
                raise GaugeError(fam.gauge, sorted(units)[0][1], f"roles disagree on the number of units: "
                                 f"{sorted(units)} ({spec.name or key})")
            out.append(Resolved(fam, f"{spec.name or key}", roles, units.pop()[0], spec.d_head))
    return order, out


def check_balance_frames(families) -> None:
    """The balance frame is invariant only if no other gauge acts on the unit's matrices."""
    for f in families:
        if f.family.gauge in ("relu_rescale", "swiglu_rescale") and f.family.key.endswith(".balance"):
            mine = {i for _, i in f.members()}
            if any(g is not f and mine & {i for _, i in g.members()} for g in families):
                raise GaugeError(f.family.gauge, f.name, "the balance frame is not invariant when another gauge "
                                 "acts on the same matrix; use the anchor frame")
