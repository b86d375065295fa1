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


@dataclass(frozen=True)
class TensorView:
    """A bound tensor as the optimizer sees it: parameter ``param``, transposed first if ``transpose``
    (a weight stored ``(in, out)``: HF ``Conv1D``, ``x @ W``, flax kernels), then the ``rows`` listed,
    in that order (``None``: all rows in their order). A fused QKV projection's query rows, RoPE's
    plane pairing (rows ``j, j + d/2`` made adjacent) and a grouped-query head group are row selections.
    """

    param: str
    transpose: bool = False
    rows: tuple[int, ...] | None = None

    def __str__(self) -> str:
        s = self.param + (".T" if self.transpose else "")
        if self.rows is not None:
            r = self.rows
            contiguous = list(r) == list(range(r[0], r[0] + len(r)))
            s += f"[{r[0]}:{r[-1] + 1}]" if contiguous else f"[{len(r)} rows]"
        return s


@dataclass
class GaugeSpec:
    """An explicit binding: ``family`` (a key of ``FAMILIES``, e.g. ``"relu_rescale.balance"``,
    or ``"ce_shift"`` for both shift families) and ``roles`` mapping each role to a parameter name,
    a :class:`TensorView`, or a list of them (several consumers of one norm; a rotation's weight and
    bias, or its query head groups). ``d_head`` for ``head_rotation.norope``.
    """

    family: str
    roles: dict[str, str | TensorView | Sequence[str | TensorView]]
    name: str = ""
    d_head: int = 0


@dataclass(frozen=True)
class Resolved:
    """One family binding: generated family, display name, role → entry indices, units, d_head."""

    family: object
    name: str
    roles: dict
    units: int
    d_head: int = 0


@dataclass(frozen=True)
class Layout:
    """How the bound parameters appear to the optimizer.

    Entry ``i < n`` is parameter ``i`` in its *work layout*: transposed if ``transpose[i]``, then its
    rows permuted by ``perms[i]`` (``None``: in order). Entry ``n + j`` is ``views[j] = (i, start,
    stop)``, rows ``start:stop`` of entry ``i`` (a view, so families acting on it act on the parameter).
    """

    transpose: tuple[bool, ...]
    perms: tuple[tuple[int, ...] | None, ...]
    views: tuple[tuple[int, int, int], ...]

    @property
    def plain(self) -> bool:
        return not (any(self.transpose) or any(p is not None for p in self.perms) or self.views)

    def base(self, entry: int) -> int:
        """The parameter an entry belongs to."""
        n = len(self.transpose)
        return entry if entry < n else self.views[entry - n][0]


def _as_view(x) -> TensorView:
    return x if isinstance(x, TensorView) else TensorView(str(x))


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


def _layout(views: list[TensorView], shapes: dict[str, tuple[int, ...]], what: str) -> tuple[list[str], Layout, dict]:
    """Parameters in first-use order, their layout, and each view's entry index."""
    order: list[str] = []
    for v in views:
        if v.param not in shapes:
            raise GaugeError("bind", v.param, f"no such {what} in the model")
        if v.param not in order:
            order.append(v.param)
    transpose, perms, extra, entry = [], [], [], {}
    for i, name in enumerate(order):
        mine = list(dict.fromkeys(v for v in views if v.param == name))
        flags = {v.transpose for v in mine}
        if len(flags) > 1:
            raise GaugeError("bind", name, "bound both as stored and transposed")
        t = flags.pop()
        shape = tuple(shapes[name])
        if t and len(shape) != 2:
            raise GaugeError("bind", name, f"shape {shape}: only a matrix can be bound transposed")
        rows = shape[::-1][0] if t else (shape[0] if shape else 1)
        picked: list[int] = []
        for v in mine:
            if v.rows is None:
                continue
            if not v.rows or min(v.rows) < 0 or max(v.rows) >= rows:
                raise GaugeError("bind", str(v), f"row selection outside the {rows} rows of {name} {shape}")
            if set(v.rows) & set(picked):
                raise GaugeError("bind", str(v), f"row selections of {name} overlap")
            picked += list(v.rows)
        perm = tuple(picked + [r for r in range(rows) if r not in set(picked)])
        transpose.append(t)
        perms.append(None if perm == tuple(range(rows)) else perm)
        at = 0
        for v in mine:
            if v.rows is None:
                entry[v] = i
            else:
                entry[v] = ("view", i, at, at + len(v.rows))
                at += len(v.rows)
    n = len(order)
    for v, e in list(entry.items()):
        if isinstance(e, tuple):
            extra.append(e[1:])
            entry[v] = n + len(extra) - 1
    return order, Layout(tuple(transpose), tuple(perms), tuple(extra)), entry


def entry_shape(layout: Layout, shapes: list[tuple[int, ...]], entry: int) -> tuple[int, ...]:
    """Shape of an entry in the work layout (``shapes``: the parameters' stored shapes)."""
    n = len(layout.transpose)
    i = layout.base(entry)
    shape = tuple(shapes[i])[::-1] if layout.transpose[i] else tuple(shapes[i])
    if entry < n:
        return shape
    _, start, stop = layout.views[entry - n]
    return (stop - start, *shape[1:])


def resolve(specs: Sequence[GaugeSpec], shapes: dict[str, tuple[int, ...]], families: dict,
            what: str = "parameter") -> tuple[list[str], list[Resolved], Layout]:
    """Parameter names in binding order, the resolved family bindings (sorted by :data:`ORDER`, families
    outside it last in the given order; roles index the entries of the layout) and the :class:`Layout`."""
    keyed = []
    for spec in specs:
        keys = [k for k in families if k == spec.family or k.startswith(spec.family + ".")]
        if spec.family == "ce_shift":
            keys = ["ce_shift.W", "ce_shift.b"]
        if not keys or (len(keys) > 1 and spec.family != "ce_shift"):
            raise GaugeError(spec.family, None, f"unknown gauge family; choose from {sorted(families)}")
        for key in keys:
            keyed.append((spec, key))
    # catalogue families in ORDER; others (discovered ones) after them, in the order given (their proved order)
    keyed.sort(key=lambda sk: ORDER.index(families[sk[1]].gauge) if families[sk[1]].gauge in ORDER else len(ORDER))
    views: list[TensorView] = []  # in the order the families read them (the parameters' binding order)
    for spec, key in keyed:
        for sl in families[key].slices:
            given = spec.roles.get(sl.role)
            for x in [] if given is None else [given] if isinstance(given, (str, TensorView)) else list(given):
                v = _as_view(x)
                if v.param not in shapes:
                    raise GaugeError(families[key].gauge, v.param, f"no such {what} in the model")
                views.append(v)
    order, layout, entry = _layout(views, shapes, what)
    stored = [tuple(shapes[n]) for n in order]
    out: list[Resolved] = []
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
            names = [_as_view(given)] if isinstance(given, (str, TensorView)) else [_as_view(x) for x in given]
            if fam.kind in ("plane", "head") and len(shapes[names[0].param]) != 2:
                raise GaugeError(fam.gauge, str(names[0]), "a rotation role's first tensor must be its weight matrix")
            for v in names:
                e = entry[v]
                shape = entry_shape(layout, stored, e)
                if fam.kind == "plane" and shape[0] % 2:
                    raise GaugeError(fam.gauge, str(v), f"shape {shape}: RoPE planes need an even number of rows")
                if fam.kind == "head" and (spec.d_head <= 0 or shape[0] % spec.d_head):
                    raise GaugeError(fam.gauge, str(v), f"shape {shape}: rows do not split into heads of "
                                     f"d_head={spec.d_head}")
                units.add((_units(key, fam, s.role, shape, spec.d_head), str(v)))
                roles.setdefault(s.role, []).append(e)
        else:
            if len({u for u, _ in units}) > 1:
                hint = ""
                if any(len(shapes[n]) == 2 for n in order):
                    hint = (" (a weight stored (in, out), as HF Conv1D or a flax kernel, is bound with "
                            "TensorView(name, transpose=True))")
                raise GaugeError(fam.gauge, sorted(units)[0][1], f"roles disagree on the number of units: "
                                 f"{sorted(units)} ({spec.name or key}){hint}")
            out.append(Resolved(fam, f"{spec.name or key}", roles, units.pop()[0], spec.d_head))
    return order, out, layout


def check_balance_frames(families) -> None:
    """The balance frame is invariant only if no other gauge acts on the unit's matrices."""
    for f in families:
        if f.family.gauge in ("relu_rescale", "swiglu_rescale") and f.family.key.endswith(".balance"):
            mine = {i for _, i in f.members()}
            if any(g is not f and mine & {i for _, i in g.members()} for g in families):
                raise GaugeError(f.family.gauge, f.name, "the balance frame is not invariant when another gauge "
                                 "acts on the same matrix; use the anchor frame")
