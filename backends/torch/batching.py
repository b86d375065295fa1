"""Isomorphic orbit families across layers, run as one: schedule, work-buffer layout, stacked views.

A transformer binds the same generated family once per layer (``gpt_small_cpu``: 27 families of
8 kinds). Every stage of the DDC step loops over families, so Python overhead, kernel launches and
``torch.compile``'s graph size scale with the number of families. Here families of one kind are
merged into a *batch* whose tensors are layer-stacked views of one work buffer.

Schedule. Families are taken in binding order; a family joins the first batch of the same
signature (generated family, roles, tensor shapes) that lies after the last batch it shares a tensor
with, provided it shares none with that batch's members; else it opens a new batch. Two families
that share a tensor therefore keep their order, so the composed canonical frame is the binding
order's; families on disjoint tensors commute.

Layout. The bound tensors are copied into one flat buffer in which the tensors that a batch stacks
(slot ``s`` of role ``R`` over its members) are consecutive, so the stack is a view:
``rows`` slices as ``(L·n, m…)`` (units ``L·n``), whole-tensor slices as ``(L, numel)`` rows, and
``cols`` slices as ``(L, m, n)`` (the column helpers of :mod:`.orbits` read a leading layer axis).
A batch whose stacks clash with an earlier batch's (a tensor in two different stacks) falls back to
its single families. Matrix-valued (head) families are never merged.

The projector is not batched: a batch's Gram diagonals and coordinates ``(L·units, …)`` are split
into per-family views for :class:`~.projection.Projector`, and the solved coefficients are
concatenated back for the batch's lift.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .orbits import BoundFamily


@dataclass
class Batch:
    """Families ``members`` (indices into the plan's families) run as ``family``, ``units`` each."""

    members: list[int]
    family: BoundFamily
    units: int

    @property
    def layers(self) -> int:
        return len(self.members)

    def split(self, t: Tensor) -> list[Tensor]:
        """``(L·units, …)`` → per member ``(units, …)`` views."""
        if self.layers == 1:
            return [t]
        return list(t.view(self.layers, self.units, *t.shape[1:]).unbind(0))

    def join(self, parts: list[Tensor]) -> Tensor:
        """Per member ``(units, …)`` → ``(L·units, …)``."""
        return parts[0] if self.layers == 1 else torch.cat(parts)


@dataclass
class Layout:
    """Where each bound tensor lives in the flat work buffer, and the stacked views batches use.

    ``offsets[i]``: element offset of tensor ``i``; ``stacks``: ``(first tensor, layers, view)`` per
    extra tensor index ``n + j`` (``view``: ``"rows"``, ``"all"`` or ``"cols"``).
    """

    shapes: list[tuple[int, ...]]
    offsets: list[int]
    numel: int
    stacks: list[tuple[int, int, str]]

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-tensor views of ``flat`` followed by the stacked views (indices ``n + j``)."""
        out = [flat[o : o + _numel(s)].view(s) for o, s in zip(self.offsets, self.shapes)]
        for first, layers, view in self.stacks:
            shape, o = self.shapes[first], self.offsets[first]
            block = flat[o : o + layers * _numel(shape)]
            if view == "rows":
                out.append(block.view(layers * shape[0], *shape[1:]))
            elif view == "all":
                out.append(block.view(layers, _numel(shape)))
            else:
                out.append(block.view(layers, *shape))
        return out

    def buffer(self, tensors: list[Tensor], dtype: torch.dtype) -> tuple[Tensor, list[Tensor]]:
        """A new flat buffer holding ``tensors`` (cast to ``dtype``) and its :meth:`views`."""
        flat = torch.empty(self.numel, dtype=dtype, device=tensors[0].device)
        views = self.views(flat)
        torch._foreach_copy_(views[: len(tensors)], tensors)
        return flat, views


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _signature(f: BoundFamily, shapes: list[tuple[int, ...]]) -> tuple | None:
    if f.kind == "head":
        return None
    return (f.family.key, f.units, tuple((r, tuple(shapes[i] for i in idx)) for r, idx in sorted(f.roles.items())))


def _tensors(f: BoundFamily) -> set[int]:
    return {i for idx in f.roles.values() for i in idx}


def schedule(families: list[BoundFamily], shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Batches of family indices (see the module docstring); their concatenation is a permutation."""
    batches: list[list[int]] = []
    for f, fam in enumerate(families):
        mine, sig = _tensors(fam), _signature(fam, shapes)
        last = max((b for b, batch in enumerate(batches) if any(mine & _tensors(families[g]) for g in batch)),
                   default=-1)
        target = next((b for b in range(last + 1, len(batches)) if sig is not None
                       and _signature(families[batches[b][0]], shapes) == sig), None)
        if target is None:
            batches.append([f])
        else:
            batches[target].append(f)
    return batches


def plan(families: list[BoundFamily], shapes: list[tuple[int, ...]]) -> tuple[list[Batch], Layout]:
    """The batches (stacked families built) and the buffer layout for ``families`` on tensors of ``shapes``."""
    groups = schedule(families, shapes)
    owner: dict[int, tuple[int, ...]] = {}  # tensor -> the stack (ordered tensor tuple) it belongs to
    accepted: list[list[int]] = []
    for group in groups:
        if len(group) == 1:
            accepted.append(group)
            continue
        stacks = _stacks(families, group)
        clash = any(owner.get(i, st) != st for st in stacks for i in st)
        if clash:
            accepted.extend([f] for f in group)
            continue
        for st in stacks:
            for i in st:
                owner[i] = st
        accepted.append(group)
    order, seen = [], set()
    for st in dict.fromkeys(owner.values()):  # stacks first, each consecutive, then the rest
        order += list(st)
        seen |= set(st)
    order += [i for i in range(len(shapes)) if i not in seen]
    offsets, o = [0] * len(shapes), 0
    for i in order:
        offsets[i] = o
        o += _numel(shapes[i])
    layout = Layout(list(shapes), offsets, o, [])
    ext: dict[tuple, int] = {}
    batches = []
    for group in accepted:
        first = families[group[0]]
        if len(group) == 1:
            batches.append(Batch(group, first, first.units))
            continue
        axis = {s.role: s.axis for s in first.family.slices}
        roles = {}
        for role, idx in first.roles.items():
            roles[role] = []
            for slot in range(len(idx)):
                st = tuple(families[g].roles[role][slot] for g in group)
                key = (st, axis[role])
                if key not in ext:
                    ext[key] = len(shapes) + len(layout.stacks)
                    layout.stacks.append((st[0], len(st), axis[role]))
                roles[role].append(ext[key])
        fam = replace(first.family, slices=tuple(replace(s, axis="rows") if s.axis == "all" else s
                                                 for s in first.family.slices))
        stacked = BoundFamily(fam, f"{first.name} (+{len(group) - 1} more layers)", roles, len(group) * first.units)
        batches.append(Batch(group, stacked, first.units))
    return batches, layout


def _stacks(families: list[BoundFamily], group: list[int]) -> list[tuple[int, ...]]:
    first = families[group[0]]
    return [tuple(families[g].roles[role][slot] for g in group) for role, idx in first.roles.items()
            for slot in range(len(idx))]
