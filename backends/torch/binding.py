"""Bind a model's parameters to gauges: found from the computation, checked on the model itself.

``bind(model, example=...)`` traces one forward pass (:mod:`gaugemath.structure.torch_trace`),
finds the orbit families in the graph (:mod:`gaugemath.structure.detect`: from the operations,
never from names or classes), keeps only compositions whose composite frame is proved
(:data:`PROVED_OVERLAPS`), and checks every family on the model (:mod:`.check`): a random group
element applied to an fp64 copy must leave the loss unchanged, the loss gradient must be
orthogonal to the orbit, and the composite canonical point must be the same at ``θ`` and ``g·θ``.
What fails any step is not bound; the :class:`Binding` lists it with the reason.

``bind(model, specs, example=...)`` binds explicit :class:`GaugeSpec` s through the same checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from gaugemath.errors import GaugeError
from gaugemath.structure.detect import Refusal

from .._compose import compose as _compose
from .._compose import spec_of as _spec_of
from .._compose import unique_names
from .._spec import GaugeSpec, Layout, TensorView, check_balance_frames, resolve
from ._generated import FAMILIES
from .orbits import BoundFamily

__all__ = ["Binding", "GaugeSpec", "TensorView", "bind", "detect"]

#: how canonical points are chosen (:func:`bind`'s ``frames``)
FRAMES = ("balanced", "per_family")


@dataclass
class Binding:
    """Bound parameters (``(name, tensor)``, in binding order), the orbit families on them, how the
    optimizer lays them out (:class:`~gaugemath.backends._spec.Layout`: family roles index its
    entries), the families refused with their reasons, what was checked, and how canonical points are
    chosen (``frames``, see :func:`bind`)."""

    params: list[tuple[str, Tensor]]
    families: list[BoundFamily] = field(default_factory=list)
    layout: Layout | None = None
    refusals: list[Refusal] = field(default_factory=list)
    model_numel: int = 0
    checked: str = ""
    frames: str = "balanced"

    def __post_init__(self) -> None:
        if self.layout is None:
            n = len(self.params)
            self.layout = Layout((False,) * n, (None,) * n, ())

    # ------------------------------------------------------------- layout
    def entry_names(self) -> list[str]:
        """A display name per entry (parameters, then row views)."""
        names = [n + (".T" if t else "") for (n, _), t in zip(self.params, self.layout.transpose)]
        for i, start, stop in self.layout.views:
            names.append(f"{names[i]}[rows {start}:{stop}]")
        return names

    def to_work(self, tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> list[Tensor]:
        """Copies of per-parameter tensors (stored layout) in the work layout (:func:`work_copies`)."""
        return work_copies(self.layout, tensors, dtype)

    def from_work(self, index: int, w: Tensor) -> Tensor:
        """Parameter ``index``'s work-layout tensor ``w`` in its stored layout (:func:`stored`)."""
        return stored(self.layout, index, w)

    def entries(self, work: list[Tensor]) -> list[Tensor]:
        """Work-layout tensors plus the row views of the layout (:func:`entries`)."""
        return entries(self.layout, work)

    # ------------------------------------------------------------- group action
    def random_element(self, gen: torch.Generator, dtype: torch.dtype, spread: float = 1.5) -> list:
        """A random group element, one entry per family (:func:`gaugemath.verify.random_element`)."""
        from gaugemath.verify import random_element

        return random_element(self, gen, dtype, spread)

    def act(self, g: list, tensors: Sequence[Tensor], covector: bool = False,
            only: Sequence[int] | None = None) -> None:
        """In place on per-parameter tensors (stored layout): ``t ← g·t`` (``covector``: ``D(g)^{-T} t``,
        the gradient's rule); ``only``: the families to apply (default all)."""
        work = self.to_work(tensors)
        ents = self.entries(work)
        for f, (fam, h) in enumerate(zip(self.families, g)):
            if only is None or f in only:
                fam.act(h, ents, covector=covector)
        with torch.no_grad():
            for i, t in enumerate(tensors):
                t.copy_(self.from_work(i, work[i]))

    # ------------------------------------------------------------- check
    def check(self, model: nn.Module, example=None, *, loss: str | Callable | None = None, seed: int = 1) -> str:
        """Check this binding on ``model`` again (e.g. after editing the model or loading weights), with a
        new random group element: raise a :class:`GaugeError` naming the first family that is not a gauge
        of the model; else return the summary of what was measured."""
        from .check import check_binding

        inner, prefix = _unwrap(model)
        args, kwargs = _example(inner, example)
        mine = {id(p) for _, p in self.params}
        named = {id(p) for p in inner.parameters()}
        if not mine <= named:
            raise GaugeError("bind", type(inner).__name__, "the binding's parameters are not this model's")
        checked = check_binding(inner, self, [], args, kwargs, target_of(_loss(inner, loss)), seed, strict=True,
                                prefix=prefix)
        return checked.checked

    def rebind(self, model: nn.Module) -> Binding:
        """This binding on ``model``'s current parameters of the same names, for a wrapper that replaced the
        parameter objects: ``torch.distributed.fsdp.fully_shard`` (FSDP2) makes each one a new
        ``nn.Parameter`` holding a DTensor shard. Bind the unsharded model, shard it, then pass
        ``binding.rebind(model)`` to the optimizer. Every bound name must still be a parameter with the same
        (global) shape and dtype, else a :class:`GaugeError` names it; families, layout and what was checked
        carry over, since sharding changes where a tensor is stored, not what the model computes."""
        inner, prefix = _unwrap(model)
        named = dict(inner.named_parameters(remove_duplicate=False))
        params = []
        for name, old in self.params:
            new = named.get(name, named.get(name[len(prefix):] if name.startswith(prefix) else name))
            if new is None:
                raise GaugeError(self.gauge_of(old), name, "is bound but is not a parameter of this model")
            if tuple(new.shape) != tuple(old.shape) or new.dtype != old.dtype:
                raise GaugeError(self.gauge_of(old), name, f"is {tuple(old.shape)}/{old.dtype} in the binding but "
                                 f"{tuple(new.shape)}/{new.dtype} in this model")
            params.append((name, new))
        return replace(self, params=params)

    # ------------------------------------------------------------- report
    def gauge_of(self, p: Tensor) -> str:
        idx = next((i for i, (_, q) in enumerate(self.params) if q is p), None)
        gauges = [f.family.gauge for f in self.families if any(self.layout.base(i) == idx for _, i in f.members())]
        return ",".join(dict.fromkeys(gauges)) or "none"

    def bound_numel(self) -> int:
        return sum(p.numel() for _, p in self.params)

    def __str__(self) -> str:
        names = self.entry_names()
        lines = [f"Binding: {len(self.families)} orbit families on {len(self.params)} parameters"]
        if self.model_numel:
            lines[0] += (f" ({self.bound_numel():,} of {self.model_numel:,} parameter entries, "
                         f"{self.bound_numel() / self.model_numel:.1%})")
        for f in self.families:
            roles = "; ".join(f"{r}: " + ", ".join(names[i] for i in idx) for r, idx in f.roles.items())
            lines.append(f"  {f.name:32s} {f.family.key:24s} {f.units:5d} units  [{roles}]")
        if self.checked:
            lines.append(f"  checked: {self.checked}")
        for r in self.refusals:
            lines.append(f"  refused: {r}")
        return "\n".join(lines)

    __repr__ = __str__


# ----------------------------------------------------------------------- layouts
def work_copies(layout: Layout, tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> list[Tensor]:
    """Copies of per-parameter tensors (stored layout) in the work layout: transposed where the
    layout says, rows permuted by its permutation; contiguous, in ``dtype`` (default: as given)."""
    out = []
    for i, t in enumerate(tensors):
        w = work_view(layout, i, t.detach())
        out.append(w.to(dtype or w.dtype, copy=True).contiguous())
    return out


def work_view(layout: Layout, index: int, t: Tensor) -> Tensor:
    """Parameter ``index``'s tensor ``t`` (stored layout) in the work layout: a view (transposed), or a
    gather where the layout permutes rows."""
    t = t.T if layout.transpose[index] else t
    perm = layout.perms[index]
    return t[torch.tensor(perm, device=t.device)] if perm is not None else t


def stored(layout: Layout, index: int, w: Tensor) -> Tensor:
    """Parameter ``index``'s work-layout tensor ``w`` back in its stored layout (a view or a gather)."""
    perm = layout.perms[index]
    if perm is not None:
        inv = torch.empty(len(perm), dtype=torch.long, device=w.device)
        inv[torch.tensor(perm, device=w.device)] = torch.arange(len(perm), device=w.device)
        w = w[inv]
    return w.T if layout.transpose[index] else w


def entries(layout: Layout, work: Sequence[Tensor]) -> list[Tensor]:
    """Work-layout tensors, then the row views of the layout (views: families acting on them act on
    the parameter's work tensor)."""
    return list(work) + [work[i][start:stop] for i, start, stop in layout.views]


def restrict(layout: Layout, params: Sequence[int]) -> tuple[Layout, dict[int, int]]:
    """The layout of a subset of the parameters (one param group) and the map of entry indices."""
    local = {g: k for k, g in enumerate(params)}
    n = len(layout.transpose)
    views = [(j, v) for j, v in enumerate(layout.views) if v[0] in local]
    entry_map = dict(local)
    for k, (j, _) in enumerate(views):
        entry_map[n + j] = len(params) + k
    sub = Layout(tuple(layout.transpose[i] for i in params), tuple(layout.perms[i] for i in params),
                 tuple((local[v[0]], v[1], v[2]) for _, v in views))
    return sub, entry_map


# ----------------------------------------------------------------------- building
def _named(model: nn.Module) -> dict[str, Tensor]:
    return dict(model.named_parameters(remove_duplicate=False))


def _build(model: nn.Module, specs: Sequence[GaugeSpec], prefix: str = "", families: dict | None = None) -> Binding:
    named = _named(model)
    order, resolved, layout = resolve(specs, {n: tuple(p.shape) for n, p in named.items()}, families or FAMILIES)
    fams = [BoundFamily(r.family, r.name, r.roles, r.units, r.d_head) for r in resolved]
    params = [(prefix + n, named[n]) for n in order]
    seen: dict[int, str] = {}
    for n, p in params:
        if id(p) in seen:
            raise GaugeError(",".join({f.family.gauge for f in fams}), n,
                             f"is the same tensor as {seen[id(p)]} (tied weights break the gauge)")
        seen[id(p)] = n
    return Binding(params, fams, layout, model_numel=sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------------- wrappers, targets
def compose(specs: Sequence[GaugeSpec], frames: bool = True,
            balanced: bool = True) -> tuple[list[GaugeSpec], list[Refusal]]:
    """:func:`gaugemath.backends._compose.compose` with the torch backend's families."""
    return _compose(specs, FAMILIES, frames, balanced)


def _is_dtensor(t: Tensor) -> bool:
    """A ``torch.distributed.tensor.DTensor`` (FSDP2's and tensor parallelism's sharded parameters). Only a
    process that created one has imported the class, so a module never imported is never asked about."""
    import sys

    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that computes (``torch.compile``'s ``_orig_mod``, DDP/FSDP/DataParallel ``.module``)
    and the prefix its parameter names have in the wrapper."""
    prefix = ""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model, prefix = inner, prefix + "_orig_mod."
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or \
                type(model).__name__ in ("FullyShardedDataParallel",):
            model, prefix = model.module, prefix + "module."
            continue
        return model, prefix


def target_of(loss: str | Callable | None) -> Callable[[Any], Any]:
    """What must not change: ``loss(output)`` for a callable; for ``"cross_entropy"`` the
    log-softmax of the logits (the output, or its ``.logits``); for ``None`` the output's ``loss``
    when it has one (Hugging Face models given labels), else every tensor of the output."""
    if callable(loss):
        return loss
    if loss == "cross_entropy":
        return lambda out: torch.log_softmax(_logits(out), dim=-1)
    if loss is not None:
        raise ValueError(f"loss={loss!r}: pass None, 'cross_entropy' or a callable output -> tensor")

    def default(out):
        found = _field(out, "loss")
        if isinstance(found, Tensor):
            return found
        return tuple(t for t in torch.utils._pytree.tree_leaves(_plain(out)) if isinstance(t, Tensor))

    return default


def _field(out, key: str):
    if isinstance(out, Mapping):
        return out.get(key)
    return getattr(out, key, None)


def _logits(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    found = _field(out, "logits")
    if isinstance(found, Tensor):
        return found
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise GaugeError("ce_shift", type(out).__name__, "loss='cross_entropy' needs logits: the output or its .logits")


def _plain(out):
    """Model outputs as plain containers (HF ``ModelOutput`` → dict; caches and other objects dropped)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        return {k: _plain(v) for k, v in out.items() if v is not None}
    if isinstance(out, (tuple, list)):
        return [_plain(v) for v in out]
    return None


def _example(model: nn.Module, example) -> tuple[tuple, dict]:
    if example is None:
        make = getattr(model, "example_inputs", None)
        if make is None:
            raise GaugeError("bind", type(model).__name__, "bind needs example inputs to trace the model: "
                             "bind(model, example=(x,)) or example={'input_ids': ..., 'labels': ...}")
        example = make()
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, Tensor):
        return (example,), {}
    return tuple(example), {}


# ----------------------------------------------------------------------- public
def detect(model: nn.Module, example=None, *, loss: str | Callable | None = None) -> list[GaugeSpec]:
    """The gauge specs the graph of one forward pass supports, in proved compositions (not yet
    checked on the model: :func:`bind` does that), e.g. for the JAX binder of the same model."""
    from gaugemath.structure.detect import detect as detect_graph
    from gaugemath.structure.torch_trace import trace

    inner, _ = _unwrap(model)
    args, kwargs = _example(inner, example)
    graph = trace(inner, args, kwargs, target_of(_loss(inner, loss)))
    return compose([_spec_of(p) for p in detect_graph(graph).proposals])[0]


def _loss(model: nn.Module, loss):
    return getattr(model, "gauge_loss", None) if loss is None else loss


def bind(model: nn.Module, specs: Sequence[GaugeSpec] | None = None, *, example=None,
         loss: str | Callable | None = None, check: bool = True, seed: int = 0,
         frames: str = "balanced", discovered=None) -> Binding:
    """Bind ``model``'s parameters to the gauges of its computation.

    Args:
        model: any ``nn.Module`` (wrappers — ``torch.compile``, DDP, FSDP, ``DataParallel`` — are
            looked through; names keep the wrapper's prefix).
        specs: explicit :class:`GaugeSpec` s; ``None`` detects them from the graph.
        example: inputs for one forward pass: a tensor, a tuple of positional inputs, or a dict of
            keyword inputs (``{"input_ids": ids, "labels": ids}``); default ``model.example_inputs()``.
        loss: what training keeps invariant (:func:`target_of`): ``None`` (the output's ``loss`` if it
            has one, else the whole output), ``"cross_entropy"`` (softmax cross-entropy on the logits:
            admits the logit shift), or a callable ``output -> tensor``. Default ``model.gauge_loss``.
        check: check every family on the model (:mod:`.check`); ``False`` binds explicit specs unchecked.
        seed: seed of the check's random group elements.
        frames: how the optimizers choose each orbit's canonical point. ``"balanced"`` (default): the
            scale families jointly at the minimum-norm point of their orbit (:mod:`.balance`; where the
            scaling charges balance), translations before and rotations after; ``"per_family"``: each
            family's own generated frame in binding order (anchors where two families share a matrix,
            ``‖W_out[:, k]‖ = 1``, ``|γ_i| = 1``), the frames of gaugemath ≤ 0.3.
        discovered: a :class:`gaugemath.discovery.LieAlgebra` discovered from this model's module at small
            widths (``gaugemath.discover(factory, widths=..., example=...)``): its families are bound onto the
            parameters they were traced from, at this model's widths, and checked on this model like any
            other binding (a family that fails raises, naming it). ``specs`` must then be ``None``.

    A family the graph does not support, whose composition is not proved, or that fails the check
    is not bound; ``Binding.refusals`` (and ``print(binding)``) say why. Explicit specs that fail
    raise a :class:`GaugeError` instead: what the user asked for is not a symmetry of this model.
    """
    from gaugemath.structure.detect import detect as detect_graph
    from gaugemath.structure.torch_trace import trace

    from .check import check_binding

    if frames not in FRAMES:
        raise ValueError(f"frames={frames!r}: choose from {FRAMES}")
    balanced = frames == "balanced"
    inner, prefix = _unwrap(model)
    sharded = next((n for n, p in inner.named_parameters() if _is_dtensor(p)), None)
    if sharded is not None:
        raise GaugeError("bind", sharded, "is a DTensor (torch.distributed.fsdp.fully_shard or tensor parallel): "
                         "bind the model before sharding it, then take binding.rebind(model) for the optimizer")
    loss = _loss(inner, loss)
    if discovered is not None:
        return _bind_discovered(inner, prefix, discovered, specs, example, loss, check, seed, frames)
    refusals: list[Refusal] = []
    args, kwargs = (), {}
    if specs is None or check:
        if specs is not None and example is None and not hasattr(inner, "example_inputs"):
            raise GaugeError("bind", type(inner).__name__, "explicit specs are checked on the model: pass "
                             "example=(inputs) (and loss=...), or check=False to bind them unchecked")
        args, kwargs = _example(inner, example)
    if specs is None:
        graph = trace(inner, args, kwargs, target_of(loss))
        found = detect_graph(graph)
        refusals += found.refusals
        chosen, refused = compose(unique_names([_spec_of(p) for p in found.proposals]), balanced=balanced)
        refusals += refused
        if not chosen and not refusals:
            raise GaugeError("bind", type(inner).__name__, "no gauge found in the computation")
    else:
        chosen, refused = compose(list(specs), frames=False, balanced=balanced)
        if refused:
            raise GaugeError(refused[0].gauge, refused[0].where, refused[0].reason)
    seen: dict[str, int] = {}
    for i, s in enumerate(chosen):  # distinct names: the check and the report refer to families by name
        if s.name:
            seen[s.name] = seen.get(s.name, 0) + 1
            if seen[s.name] > 1:
                chosen[i] = replace(s, name=f"{s.name}#{seen[s.name]}")
    frozen = {n for n, p in _named(inner).items() if not p.requires_grad}
    if frozen:
        keep = []
        for s in chosen:
            hit = sorted({v.param if isinstance(v, TensorView) else v
                          for vs in s.roles.values() for v in ([vs] if isinstance(vs, (str, TensorView)) else vs)}
                         & frozen)
            if hit and specs is not None:
                raise GaugeError(s.family, hit[0], "is frozen (requires_grad=False): it cannot move along the orbit")
            (refusals.append(Refusal(s.family, s.name, f"{hit[0]} is frozen (requires_grad=False)")) if hit
             else keep.append(s))
        chosen = keep
    binding = _build(inner, chosen, prefix)
    binding.frames = frames
    if not balanced:
        check_balance_frames(binding.families)
    binding.refusals = refusals
    if check and binding.families:
        binding = check_binding(inner, binding, chosen, args, kwargs, target_of(loss), seed, strict=specs is not None,
                                prefix=prefix)
    return binding


def _bind_discovered(inner: nn.Module, prefix: str, alg, specs: Sequence[GaugeSpec] | None, example,
                     loss: str | Callable | None, check: bool, seed: int, frames: str) -> Binding:
    """:func:`bind` with ``discovered=``: the algebra's backend families on the parameters it was traced from."""
    from gaugemath.discovery.backend import discovered_specs, support

    from .check import check_binding

    if specs is not None:
        raise GaugeError("bind", type(inner).__name__, "pass either specs or discovered=, not both")
    if not getattr(alg.layer, "parameters", None):
        raise GaugeError("bind", alg.layer.name, "this algebra was not traced from an nn.Module (its blocks name no "
                         "parameters): bind it with gaugemath.discovery.backend.torch_binding(alg, model, names)")
    chosen, families = discovered_specs(alg, "torch")
    refusals = [Refusal("discovered", s.family, s.reason) for s in support(alg) if not s.backend]
    if check and example is None and not hasattr(inner, "example_inputs"):
        raise GaugeError("bind", type(inner).__name__, "a discovered gauge is checked on the model: pass "
                         "example=(inputs) (and loss=...), or check=False to bind it unchecked")
    if any(families[s.family].kind == "plane" for s in chosen) and (example is not None or
                                                                    hasattr(inner, "example_inputs")):
        chosen = _planes_from_graph(inner, chosen, families, example, loss)
    named = _named(inner)
    shapes = {n: tuple(p.shape) for n, p in named.items()}
    frozen = {n for n, p in named.items() if not p.requires_grad}
    keep = []
    for s in chosen:  # each family must fit this model (a wider one may group heads otherwise) and move freely
        params = {v.param if isinstance(v, TensorView) else v for vs in s.roles.values()
                  for v in (vs if isinstance(vs, list) else [vs])}
        hit = sorted(params & frozen)
        if hit:
            refusals.append(Refusal(s.family, s.name, f"{hit[0]} is frozen (requires_grad=False)"))
            continue
        try:
            resolve([s], shapes, families)
        except GaugeError as e:
            refusals.append(Refusal(s.family, s.name, f"does not fit this model: {e.reason}"))
            continue
        keep.append(s)
    if not keep:
        raise GaugeError("bind", alg.layer.name, "no discovered family can be bound: "
                         + "; ".join(str(r) for r in refusals))
    binding = _build(inner, keep, prefix, families)
    binding.refusals = refusals
    binding.frames = frames
    if frames != "balanced":
        check_balance_frames(binding.families)
    if check:  # a family that is not a symmetry of this model is refused with the measured reason
        args, kwargs = _example(inner, example)
        binding = check_binding(inner, binding, keep, args, kwargs, target_of(loss), seed, prefix=prefix,
                                families=families)
        if not binding.families:
            raise GaugeError("bind", alg.layer.name, "no discovered family is a symmetry of this model: "
                             + "; ".join(str(r) for r in binding.refusals))
    return binding


def _planes_from_graph(inner: nn.Module, chosen: list[GaugeSpec], families: dict, example, loss) -> list[GaugeSpec]:
    """Discovered RoPE plane families with the pairing and head grouping of *this* model: at the small width a
    family was discovered at, a head of two dims cannot tell interleaved pairs ``(2k, 2k+1)`` from
    ``rotate_half``'s ``(j, j + d/2)``, nor one head from a group sharing a key head. The binder's detector reads
    both off this model's graph (row views of ``q`` and ``k``); a discovered plane family on the same two
    parameters takes them. The model check then decides, as for any binding."""
    detected = [s for s in detect(inner, example, loss=loss) if s.family == "head_rotation.rope"]
    out = []
    for s in chosen:
        fam = families[s.family]
        roles = [sl.role for sl in fam.slices]
        if fam.kind != "plane" or len(roles) != 2:
            out.append(s)
            continue
        mine = [s.roles[r] for r in roles]
        for d in detected:
            views = {r: list(d.roles[r]) if isinstance(d.roles[r], (list, tuple)) else [d.roles[r]]
                     for r in ("W_Q", "W_K")}
            q, k = ({v.param if isinstance(v, TensorView) else v for v in views[r]} for r in ("W_Q", "W_K"))
            if [{mine[0]}, {mine[1]}] in ([q, k], [k, q]):
                first, second = ("W_Q", "W_K") if {mine[0]} == q else ("W_K", "W_Q")
                s = replace(s, roles={roles[0]: views[first], roles[1]: views[second]})
                break
        out.append(s)
    return out


def reindexed(f: BoundFamily, mapping: dict[int, int]) -> BoundFamily:
    return replace(f, roles={r: [mapping[i] for i in idx] for r, idx in f.roles.items()})
