"""Bind a model's parameters to gauges: ``bind(model)`` detects, ``bind(model, specs)`` is explicit.

Detection covers the reference models of :mod:`gaugemath.models` and the standard layers they
are made of: ``nn.LayerNorm``/``nn.RMSNorm`` gains against the ``nn.Linear`` layers that read
them, ReLU MLPs (``fc_in``/``fc_out``), SwiGLU MLPs (``gate``/``up``/``down``), attention with
``q``/``k`` projections (RoPE: per-plane SO(2); no RoPE: O(d_head) per head) and a CE head with
a bias. Families are ordered as the composed canonical frame was proved
(``proofs/transformer_block.md``): norm gains, rotations, unit rescales, the CE shift.

Unsound cases are refused with a :class:`~gaugemath.GaugeError` naming gauge and parameter:
a head tied to the embedding (shift gauge), a norm whose output also feeds anything but its
consumers (a residual; checked on the autograd graph of an ``example`` forward pass), a head
dimension that does not split, biases on rotated projections, shapes that disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from gaugemath.errors import GaugeError

from .._spec import GaugeSpec, check_balance_frames, resolve
from ._generated import FAMILIES
from .orbits import BoundFamily


@dataclass
class Binding:
    """Bound parameters (``(name, tensor)``, in binding order) and the orbit families on them."""

    params: list[tuple[str, torch.Tensor]]
    families: list[BoundFamily] = field(default_factory=list)

    def gauge_of(self, p: torch.Tensor) -> str:
        idx = next((i for i, (_, q) in enumerate(self.params) if q is p), None)
        gauges = [f.family.gauge for f in self.families if any(i == idx for _, i in f.members())]
        return ",".join(dict.fromkeys(gauges)) or "none"

    def __str__(self) -> str:
        lines = [f"Binding: {len(self.families)} orbit families on {len(self.params)} parameters"]
        for f in self.families:
            roles = "; ".join(f"{r}: " + ", ".join(self.params[i][0] for i in idx) for r, idx in f.roles.items())
            lines.append(f"  {f.name:32s} {f.family.key:24s} {f.units:5d} units  [{roles}]")
        return "\n".join(lines)

    __repr__ = __str__


def _build(model: nn.Module, specs: Sequence[GaugeSpec]) -> Binding:
    named = dict(model.named_parameters(remove_duplicate=False))
    order, resolved = resolve(specs, {n: tuple(p.shape) for n, p in named.items()}, FAMILIES)
    fams = [BoundFamily(r.family, r.name, r.roles, r.units, r.d_head) for r in resolved]
    params = [(n, named[n]) for n in order]
    seen = {}
    for n, p in params:
        if id(p) in seen:
            raise GaugeError(",".join({f.family.gauge for f in fams}), n,
                             f"is the same tensor as {seen[id(p)]} (tied weights break the gauge)")
        seen[id(p)] = n
    return Binding(params, fams)


def _tied(model: nn.Module, p: torch.Tensor, name: str) -> str | None:
    for n, q in model.named_parameters(remove_duplicate=False):
        if q is p and n != name:
            return n
    return None


def detect(model: nn.Module) -> list[GaugeSpec]:
    """Gauge specs for the reference architectures (see the module docstring)."""
    from gaugemath.models import torch_models as tm

    specs: list[GaugeSpec] = []
    names = {m: n for n, m in model.named_modules()}

    def pname(mod: nn.Module, attr: str) -> str:
        return f"{names[mod]}.{attr}" if names[mod] else attr

    def norm_spec(norm: nn.Module, consumers: list[nn.Linear], label: str) -> None:
        if getattr(norm, "weight", None) is None:
            return
        roles = {"gain": pname(norm, "weight"), "W": [pname(c, "weight") for c in consumers]}
        bias = getattr(norm, "bias", None)
        kind = "norm_scale.layernorm" if bias is not None else "norm_scale.rmsnorm"
        if bias is not None:
            roles["bias"] = pname(norm, "bias")
        specs.append(GaugeSpec(kind, roles, name=f"{label}: gain"))

    for mod in model.modules():
        if isinstance(mod, tm.Block):
            label = names[mod]
            attn, mlp = mod.attn, mod.mlp
            if attn.q.bias is not None or attn.k.bias is not None:
                raise GaugeError("head_rotation", pname(attn.q, "bias"), "biased q/k projections are not supported")
            norm_spec(mod.ln1, [attn.q, attn.k, attn.v], f"{label}.ln1")
            consumers = [mlp.gate, mlp.up] if isinstance(mlp, tm.SwiGLU) else [mlp.fc_in]
            norm_spec(mod.ln2, consumers, f"{label}.ln2")
            if attn.rope:
                if attn.d_head % 2:
                    raise GaugeError("head_rotation", pname(attn.q, "weight"), f"d_head={attn.d_head} is odd")
                specs.append(GaugeSpec("head_rotation.rope", {"W_Q": pname(attn.q, "weight"),
                                                              "W_K": pname(attn.k, "weight")}, name=f"{label}.attn"))
            else:
                specs.append(GaugeSpec("head_rotation.norope", {"W_Q": pname(attn.q, "weight"),
                                                                "W_K": pname(attn.k, "weight")},
                                       name=f"{label}.attn", d_head=attn.d_head))
            if isinstance(mlp, tm.SwiGLU):
                specs.append(GaugeSpec("swiglu_rescale.anchor", {"W_up": pname(mlp.up, "weight"),
                                                                 "W_down": pname(mlp.down, "weight")},
                                       name=f"{label}.mlp"))
            else:
                specs.append(GaugeSpec("relu_rescale.anchor", {"W_in": pname(mlp.fc_in, "weight"),
                                                               "b_in": pname(mlp.fc_in, "bias"),
                                                               "W_out": pname(mlp.fc_out, "weight")},
                                       name=f"{label}.mlp"))
        elif isinstance(mod, tm.MLP) and mod is model:
            specs.append(GaugeSpec("relu_rescale.balance", {"W_in": "fc_in.weight", "b_in": "fc_in.bias",
                                                            "W_out": "fc_out.weight"}, name="mlp"))
    if isinstance(model, (tm.GPT, tm.ViT)):
        norm_spec(model.ln_f, [model.head], "ln_f")
        tied = _tied(model, model.head.weight, "head.weight")
        if tied:
            raise GaugeError("ce_shift", "head.weight", f"is tied to {tied}: the logit shift W → W + 1vᵀ would move "
                             "the embedding too; untie the head or bind without ce_shift (explicit specs)")
        if model.head.bias is None:
            raise GaugeError("ce_shift", "head.bias", "the CE head needs a bias for the shift gauge")
        specs.append(GaugeSpec("ce_shift", {"W": "head.weight", "b": "head.bias"}, name="head"))
    if not specs:
        raise GaugeError("bind", type(model).__name__, "no gauge detected; pass explicit GaugeSpec(...) bindings")
    return specs


def check_norm_dataflow(model: nn.Module, binding: Binding, example) -> None:
    """Refuse a norm gain binding whose normalised output feeds anything but its bound consumers.

    One forward pass on ``example``: hooks record each bound norm's output and each consumer's
    input; on the autograd graph, the number of operations reading the norm output must equal
    the number of consumers (a residual branch is one more).
    """
    param_names = {id(p): n for n, p in model.named_parameters()}
    owners = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    outputs, inputs, hooks = {}, {}, []
    norms = []
    for fam in binding.families:
        if fam.family.gauge != "norm_scale" or "gain" not in fam.roles:
            continue
        norm = owners[id(binding.params[fam.roles["gain"][0]][1])]
        consumers = [owners[id(binding.params[i][1])] for i in fam.roles["W"]]
        norms.append((fam, norm, consumers))
        hooks.append(norm.register_forward_hook(lambda m, a, out: outputs.__setitem__(id(m), out)))
        for c in consumers:
            hooks.append(c.register_forward_hook(lambda m, a, out: inputs.__setitem__(id(m), a[0])))
    try:
        with torch.enable_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    uses: dict = {}
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                uses[nxt] = uses.get(nxt, 0) + 1
                stack.append(nxt)
    for _fam, norm, consumers in norms:
        y = outputs.get(id(norm))
        gain = param_names.get(id(norm.weight), "?")
        if y is None:
            raise GaugeError("norm_scale", gain, "the norm did not run in the example forward pass")
        for c in consumers:
            if inputs.get(id(c)) is not y:
                raise GaugeError("norm_scale", param_names.get(id(c.weight), "?"),
                                 "does not read the bound norm's output directly")
        if uses.get(y.grad_fn, 0) != len(consumers):
            raise GaugeError("norm_scale", gain, f"the norm output feeds {uses.get(y.grad_fn, 0)} operations but only "
                             f"{len(consumers)} bound consumers (e.g. a residual branch): the gain rescale is not a "
                             "symmetry")


def bind(model: nn.Module, specs: Sequence[GaugeSpec] | None = None, *, example=None) -> Binding:
    """Bind ``model``'s parameters to gauges (detected when ``specs`` is ``None``).

    With ``example`` (an input batch), norm gain bindings are checked on the autograd graph of
    one forward pass (:func:`check_norm_dataflow`).
    """
    binding = _build(model, detect(model) if specs is None else list(specs))
    if example is not None:
        check_norm_dataflow(model, binding, example)
    check_balance_frames(binding.families)
    return binding


def reindexed(f: BoundFamily, mapping: dict[int, int]) -> BoundFamily:
    return replace(f, roles={r: [mapping[i] for i in idx] for r, idx in f.roles.items()})
