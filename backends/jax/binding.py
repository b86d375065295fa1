"""Bind a parameter pytree to gauges by leaf path (``"blocks.0.mlp.up.weight"``).

Leaf paths join the pytree keys with ``.`` (dict keys, sequence indices, attribute names), so a
pytree that mirrors a torch ``state_dict`` (as :mod:`gaugemath.models.jax_models` builds them)
has the same names as the torch parameters and takes the same :class:`GaugeSpec` list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax

from gaugemath.errors import GaugeError

from .._spec import GaugeSpec, Layout, check_balance_frames, resolve
from ._generated import FAMILIES
from .orbits import JaxFamily


def _key(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_paths(tree) -> list[str]:
    """``"a.b.0.c"`` for every leaf, in ``jax.tree_util`` flattening order."""
    return [".".join(_key(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@dataclass(frozen=True)
class JaxBinding:
    """Bound leaf paths (binding order) and the orbit families on them."""

    paths: tuple[str, ...]
    families: tuple[JaxFamily, ...]
    layout: Layout | None = None
    refusals: tuple = ()
    checked: str = ""
    frames: str = "balanced"

    def __post_init__(self) -> None:
        if self.layout is None:
            n = len(self.paths)
            object.__setattr__(self, "layout", Layout((False,) * n, (None,) * n, ()))

    def entry_names(self) -> list[str]:
        names = [p + (".T" if t else "") for p, t in zip(self.paths, self.layout.transpose)]
        return names + [f"{names[i]}[rows {a}:{b}]" for i, a, b in self.layout.views]

    def act(self, g: list, leaves: list, covector: bool = False, only=None) -> list:
        """``g·leaves`` (stored layout, binding order; ``covector``: the gradient's rule), a new list."""
        from .layout import entries, from_work, sync, to_work

        ents = entries(self.layout, to_work(self.layout, leaves))
        for f, (fam, h) in enumerate(zip(self.families, g)):
            if only is None or f in only:
                ents = sync(self.layout, ents, fam.act(h, ents, covector=covector))
        return [from_work(self.layout, i, ents[i]) for i in range(len(leaves))]

    def gauge_of(self, path: str) -> str:
        if path not in self.paths:
            return "none"
        idx = self.paths.index(path)
        return ",".join(dict.fromkeys(f.family.gauge for f in self.families
                                      if any(self.layout.base(i) == idx for _, i in f.members()))) or "none"

    def __str__(self) -> str:
        lines = [f"JaxBinding: {len(self.families)} orbit families on {len(self.paths)} leaves"]
        names = self.entry_names()
        for f in self.families:
            roles = "; ".join(f"{r}: " + ", ".join(names[i] for i in idx) for r, idx in f.roles.items())
            lines.append(f"  {f.name:32s} {f.family.key:24s} {f.units:5d} units  [{roles}]")
        if self.checked:
            lines.append(f"  checked: {self.checked}")
        lines += [f"  refused: {r}" for r in self.refusals]
        return "\n".join(lines)

    __repr__ = __str__


def bind(params, specs: Sequence[GaugeSpec] | None = None, *, apply=None, example: Sequence = (), loss=None,
         check: bool = True, frames: str = "balanced", discovered=None, names=None) -> JaxBinding:
    """Bind the leaves of ``params`` to gauges (errors name the leaf path and gauge).

    Args:
        params: the parameter pytree (leaf paths joined by ``.``).
        specs: explicit :class:`GaugeSpec` s; ``None`` detects them from the jaxpr of
            ``loss(apply(params, *example))`` with the same detector as the torch binder
            (:mod:`gaugemath.structure.jax_trace`).
        apply, example: the model (``apply(params, *example) -> output``) and an input batch; every
            family is checked on them (:mod:`.check`).
        loss: what training keeps invariant: ``None`` (the whole output), ``"cross_entropy"``
            (``log_softmax`` of the output: admits the logit shift), or a callable ``output -> array``.
        check: ``False`` binds explicit specs unchecked (the catalogue's own constructions, or shapes
            only, as in ``jax.eval_shape``).
        frames: ``"balanced"`` (default) or ``"per_family"``: how canonical points are chosen, as in the
            torch :func:`~gaugemath.backends.torch.bind`.
        discovered, names: a :class:`gaugemath.discovery.LieAlgebra` and where its blocks are in ``params``
            (``{block: leaf path or TensorView}``; default: the torch parameter names it was traced from,
            for a pytree keyed by them in torch's layout): its families the backends apply are bound,
            checked like explicit specs (``apply``/``example``), the others listed in ``refusals``.

    Detected families that fail the check are refused (listed in ``refusals``); explicit specs that
    fail raise a :class:`GaugeError` with the measured change.
    """
    if frames not in ("balanced", "per_family"):
        raise ValueError(f"frames={frames!r}: choose from ('balanced', 'per_family')")
    target = _target(loss)
    refusals: list = []
    if discovered is not None:
        from gaugemath.discovery.backend import discovered_specs, support
        from gaugemath.structure.detect import Refusal

        if specs is not None:
            raise GaugeError("bind", "params", "pass either specs or discovered=, not both")
        chosen, families = discovered_specs(discovered, "jax", names)
        binding = _bind(params, chosen, apply, example, target, check, frames, families)
        refused = tuple(Refusal("discovered", s.family, s.reason) for s in support(discovered) if not s.backend)
        return JaxBinding(binding.paths, binding.families, binding.layout, refused, binding.checked, frames)
    if specs is None:
        if apply is None:
            raise GaugeError("bind", "params", "detection traces the model: pass apply=fn and example=(...)")
        from gaugemath.structure.detect import detect
        from gaugemath.structure.jax_trace import trace

        from .._compose import compose, spec_of, unique_names

        found = detect(trace(apply, params, tuple(example), target))
        specs, refused = compose(unique_names([spec_of(p) for p in found.proposals]), FAMILIES,
                                 balanced=frames == "balanced")
        refusals = list(found.refusals) + refused
        while True:
            try:
                binding = _bind(params, specs, apply, example, target, check, frames)
                break
            except GaugeError as e:  # a detected family that is not a gauge of this model: refused
                bad = [s for s in specs if s.name == e.block]
                if not bad:
                    raise
                from gaugemath.structure.detect import Refusal

                refusals.append(Refusal(e.gauge, e.block, e.reason))
                specs = [s for s in specs if s is not bad[0]]
        return JaxBinding(binding.paths, binding.families, binding.layout, tuple(refusals), binding.checked, frames)
    return _bind(params, specs, apply, example, target, check, frames)


def _target(loss):
    if callable(loss):
        return loss
    if loss == "cross_entropy":
        return lambda out: jax.nn.log_softmax(out, axis=-1)
    if loss is None:
        return None
    raise ValueError(f"loss={loss!r}: pass None, 'cross_entropy' or a callable output -> array")


def _bind(params, specs, apply, example, target, check, frames: str = "balanced",
          families: dict | None = None) -> JaxBinding:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    shapes = {".".join(_key(k) for k in path): tuple(leaf.shape) for path, leaf in flat}
    order, resolved, layout = resolve(specs, shapes, families or FAMILIES, what="leaf")
    fams = tuple(JaxFamily(r.family, r.name, r.roles, r.units, r.d_head) for r in resolved)
    if frames != "balanced":
        check_balance_frames(fams)
    binding = JaxBinding(tuple(order), fams, layout, frames=frames)
    if check and fams:
        if apply is None:
            raise GaugeError("bind", ", ".join(order[:3]), "explicit specs are checked on the model: pass apply=fn "
                             "(fn(params, *example) -> output) and example=(...), or check=False to bind unchecked")
        from .check import check_binding

        summary = check_binding(binding, params, apply, tuple(example), target)
        binding = JaxBinding(binding.paths, binding.families, binding.layout, (), summary, frames)
    return binding
