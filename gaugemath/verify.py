"""The equivariance protocol of ddc.md §3 (paper Fig. 28) on a backend's optimizer.

For each construction: a small model, its binding, a random group element ``g`` of the bound
gauges (scales ``α ∈ [e^-1.5, e^1.5]``, translations ``N(0, s²)`` with ``s`` the RMS of the entries
they shift, rotations). Run A trains from ``θ`` on the
model's own loss gradients ``g_A``; run B starts at ``g·θ`` and receives ``g_B = D(g)^{-T} g_A``.
The deviation at step ``t`` is ``‖θ_B,t − g·θ_A,t‖ / ‖g·θ_A,t‖`` (Euclidean norm over all bound
parameters); we report its maximum over the steps. PASS below ``1e-6`` (fp32) / ``1e-12`` (fp64).
The same run with ``torch.optim.AdamW`` is the negative control and must FAIL.

Why translations are drawn at the parameters' scale: a scale costs run B no precision (fp32 stores
``αθ`` as well as ``θ``), but a shift ``v`` much larger than the shifted columns does: run B stores
``W + 1vᵀ`` and keeps only ``log2(|v|/|W|)`` fewer bits of the centred part ``W`` that the loss sees,
and every step's update is rounded at ``|v|`` again. With ``v ~ N(0, 1)`` against GPT's 0.02-scale
head that is a floor of ~50 ε ≈ 3e-6 for any optimizer that reads the centred head (the jointly
balanced frame does, through ``ln_f``: measured 1.9e-6 on ``transformer.layernorm_relu``, against
3.3e-7 with ``v`` at the head's scale); it measures fp32 storage, not the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

THRESHOLDS = {"float32": 1e-6, "float64": 1e-12}


@dataclass
class Construction:
    name: str
    make: Callable  # () -> (model, specs or None, loss_fn(model, generator) -> loss)


def _constructions():
    import torch
    from torch import nn

    from gaugemath.backends.torch import GaugeSpec
    from gaugemath.models import MLP, Attention, SwiGLU, ViT, tiny_gpt

    def regression(model, d_in, d_out):
        def loss(m, gen):
            x = torch.randn(16, d_in, generator=gen, dtype=_dtype(m))
            y = torch.randn(16, d_out, generator=gen, dtype=_dtype(m))
            return (m(x) - y).pow(2).mean()

        return loss

    def ce_head():
        model = nn.Linear(6, 5, bias=True)

        def loss(m, gen):
            x = torch.randn(16, 6, generator=gen, dtype=_dtype(m))
            y = torch.randint(0, 5, (16,), generator=gen)
            return nn.functional.cross_entropy(m(x), y)

        return model, [GaugeSpec("ce_shift", {"W": "weight", "b": "bias"}, name="head")], loss

    def relu():
        return MLP(4, 8, 3), None, regression(None, 4, 3)

    def swiglu():
        specs = [GaugeSpec("swiglu_rescale.balance", {"W_up": "up.weight", "W_down": "down.weight"}, name="mlp")]
        return SwiGLU(6, 8), specs, regression(None, 6, 6)

    def norm(kind):
        def make():
            layer = nn.LayerNorm(6) if kind == "layernorm" else nn.RMSNorm(6)
            model = nn.Sequential(layer, nn.Linear(6, 4))
            roles = {"gain": "0.weight", "W": "1.weight"}
            if kind == "layernorm":
                roles["bias"] = "0.bias"
            return model, [GaugeSpec(f"norm_scale.{kind}", roles, name="norm")], regression(None, 6, 4)

        return make

    def producer():
        model = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6, elementwise_affine=False), nn.Linear(6, 2))
        specs = [GaugeSpec("norm_scale.producer", {"W_p": "0.weight", "b_p": "0.bias"}, name="producer")]
        return model, specs, regression(None, 3, 2)

    def attention(rope):
        def make():
            model = Attention(8, 2, rope=rope)
            specs = [GaugeSpec("head_rotation.rope" if rope else "head_rotation.norope",
                               {"W_Q": "q.weight", "W_K": "k.weight"}, name="attn", d_head=model.d_head)]

            def loss(m, gen):
                x = torch.randn(2, 5, 8, generator=gen, dtype=_dtype(m))
                return (m(x) - torch.randn(2, 5, 8, generator=gen, dtype=_dtype(m))).pow(2).mean()

            return model, specs, loss

        return make

    def gpt(norm_kind, mlp):
        def make():
            model = tiny_gpt(norm=norm_kind, mlp=mlp)

            def loss(m, gen):
                idx = torch.randint(0, 11, (4, 8), generator=gen)
                return m.loss(idx[:, :-1], idx[:, 1:])

            return model, None, loss

        return make

    def vit():
        model = ViT(image_size=8, patch=4, channels=1, d_model=8, n_layers=1, n_heads=2, d_ff=16, classes=3)

        def loss(m, gen):
            x = torch.randn(4, 1, 8, 8, generator=gen, dtype=_dtype(m))
            return nn.functional.cross_entropy(m(x), torch.randint(0, 3, (4,), generator=gen))

        return model, None, loss

    return [
        Construction("ce_shift", ce_head),
        Construction("relu_rescale", relu),
        Construction("swiglu_rescale", swiglu),
        Construction("norm_scale.layernorm", norm("layernorm")),
        Construction("norm_scale.rmsnorm", norm("rmsnorm")),
        Construction("norm_scale.producer", producer),
        Construction("head_rotation.rope", attention(True)),
        Construction("head_rotation.norope", attention(False)),
        Construction("transformer.rmsnorm_swiglu", gpt("rmsnorm", "swiglu")),
        Construction("transformer.layernorm_relu", gpt("layernorm", "relu")),
        Construction("vit.layernorm_relu", vit),
    ]


def _dtype(model):
    return next(model.parameters()).dtype


def worse(worst: float, dev: float) -> float:
    """The larger deviation, a NaN winning (``max(0.1, nan)`` is 0.1: a NaN run would pass)."""
    if worst != worst:  # already NaN
        return worst
    return dev if not dev <= worst else worst


def random_element(binding, gen, dtype, spread: float = 1.5, theta=None):
    """A random group element, one entry per family, in the form ``BoundFamily.act`` takes (any backend's
    binding with ``families``): scales ``exp(U(-spread, spread))``, translations ``N(0, s²)`` (``s = 1``,
    or with ``theta``, the family's entries, the RMS of the entries it shifts), plane angles
    ``U(0, 2π)``, orthogonal heads (QR of a Gaussian)."""
    import numpy as np
    import torch

    out = []
    for fam in binding.families:
        n = fam.units
        if fam.kind == "scale":
            out.append(torch.exp(2 * spread * torch.rand(n, generator=gen, dtype=dtype) - spread))
        elif fam.kind == "translate":
            s = 1.0
            if theta is not None:
                sq = [np.asarray(theta[i], dtype=np.float64).ravel() ** 2 for _, i in fam.members()]
                s = float(np.sqrt(np.concatenate(sq).mean())) or 1.0
            out.append(s * torch.randn(n, generator=gen, dtype=dtype))
        elif fam.kind == "plane":
            ang = 2 * math.pi * torch.rand(n, generator=gen, dtype=dtype)
            out.append((torch.cos(ang), torch.sin(ang)))
        else:
            q, _ = torch.linalg.qr(torch.randn(n, fam.d_head, fam.d_head, generator=gen, dtype=dtype))
            out.append(q)
    return out


def _act_all(binding, g, tensors, covector=False):
    if hasattr(binding, "act"):  # torch: through the binding's layout
        binding.act(g, tensors, covector=covector)
        return
    for fam, h in zip(binding.families, g):
        fam.act(h, tensors, covector=covector)


def run_protocol(construction: Construction, optimizer: str = "ddc_adam", dtype: str = "float32", steps: int = 50,
                 seed: int = 0, lr: float = 1e-2, weight_decay: float = 0.1, vertical: str = "freeze",
                 history: list[float] | None = None, frames: str = "balanced") -> float:
    """Max over steps of the relative deviation of run B from ``g·`` run A (see module docstring).

    ``history``: if given, the deviation after each step is appended to it (``steps`` values);
    ``frames``: the bindings' canonical points (:func:`gaugemath.backends.torch.bind`)."""
    import copy

    import torch

    from gaugemath.backends.torch import DDCAdam, DDCMuon, bind

    torch.manual_seed(seed)
    tdtype = getattr(torch, dtype)
    model, specs, loss_fn = construction.make()
    model = model.to(tdtype)
    # explicit specs here are the catalogue's reference layers (proved in proofs/): bound unchecked
    binding = bind(model, specs, check=False, frames=frames)
    model_b = copy.deepcopy(model)
    binding_b = bind(model_b, specs, check=False, frames=frames)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        g = random_element(binding, gen, tdtype, theta=binding.entries(binding.to_work([p for _, p in binding.params])))
        _act_all(binding_b, g, [p for _, p in binding_b.params])

    def make_opt(m, b):
        if optimizer == "adamw":
            return [torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)]
        if optimizer == "muon":  # torch.optim.Muon on the matrices, AdamW on the rest
            mats = [p for p in m.parameters() if p.dim() == 2]
            rest = [p for p in m.parameters() if p.dim() != 2]
            return [torch.optim.Muon(mats, lr=lr, weight_decay=weight_decay)] + (
                [torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay)] if rest else [])
        if optimizer == "ddc_muon":
            return [DDCMuon(m.parameters(), binding=b, lr=lr, weight_decay=weight_decay, adam_lr=lr,
                            adam_weight_decay=weight_decay, vertical=vertical)]
        return [DDCAdam(m.parameters(), binding=b, lr=lr, weight_decay=weight_decay, vertical=vertical)]

    opts_a, opts_b = make_opt(model, binding), make_opt(model_b, binding_b)
    data = torch.Generator().manual_seed(seed + 2)
    worst = 0.0
    for _ in range(steps):
        for o in opts_a:
            o.zero_grad()
        loss_fn(model, data).backward()
        with torch.no_grad():
            grads = [p.grad.clone() for _, p in binding.params]
            _act_all(binding, g, grads, covector=True)
            for (_, p), gr in zip(binding_b.params, grads):
                p.grad = gr
        free_a = [p for p in model.parameters() if all(p is not q for _, q in binding.params)]
        free_b = [p for p in model_b.parameters() if all(p is not q for _, q in binding_b.params)]
        for pa, pb in zip(free_a, free_b):
            pb.grad = pa.grad.clone()
        for o in opts_a + opts_b:
            o.step()
        with torch.no_grad():
            image = [p.detach().clone() for _, p in binding.params]
            _act_all(binding, g, image)
            num = sum(float((p.detach() - q).pow(2).sum()) for (_, p), q in zip(binding_b.params, image))
            den = sum(float(q.pow(2).sum()) for q in image)
            worst = worse(worst, math.sqrt(num / den))
            if history is not None:
                history.append(math.sqrt(num / den))
    return worst


def run_protocol_jax(construction: Construction, optimizer: str = "ddc_adam", dtype: str = "float32",
                     steps: int = 50, seed: int = 0, lr: float = 1e-2, weight_decay: float = 0.1,
                     vertical: str = "freeze") -> float:
    """The protocol with ``gaugemath.backends.jax.ddc_adam`` (or ``optax.adamw``) under ``jax.jit``.

    The construction's torch model only computes run A's loss gradients (at run A's JAX parameters,
    copied in each step); everything the optimizer does is JAX. ``float64`` needs
    ``jax_enable_x64``, switched on here (it also gives float32 runs the fp64 canonical path, as torch).
    """
    import jax

    jax.config.update("jax_enable_x64", True)  # fp64 for float64 runs and for the canonical path
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from gaugemath.backends import jax as gj
    from gaugemath.backends.jax.layout import entries as jentries
    from gaugemath.backends.jax.layout import to_work as jwork
    from gaugemath.backends.torch import detect

    torch.manual_seed(seed)
    tdtype = getattr(torch, dtype)
    model, specs, loss_fn = construction.make()
    model = model.to(tdtype)
    specs = specs if specs is not None else detect(model)
    params_a = {n: jnp.asarray(p.detach().numpy()) for n, p in model.named_parameters()}
    binding = gj.bind(params_a, specs, check=False)  # catalogue constructions (proved)
    gen = torch.Generator().manual_seed(seed + 1)
    g = [tuple(jnp.asarray(x.numpy()) for x in h) if isinstance(h, tuple) else jnp.asarray(h.numpy())
         for h in random_element(binding, gen, tdtype, theta=jentries(binding.layout, jwork(
             binding.layout, [params_a[p] for p in binding.paths])))]

    def act(tree, covector=False):
        leaves = [tree[p] for p in binding.paths]
        for fam, h in zip(binding.families, g):
            leaves = fam.act(h, leaves, covector=covector)
        return {**tree, **dict(zip(binding.paths, leaves))}

    params_b = act(params_a)
    mats = [n for n, v in params_a.items() if v.ndim == 2]
    if optimizer == "adamw":
        tx = optax.adamw(lr, weight_decay=weight_decay)
    elif optimizer in ("ddc_muon", "muon"):  # "muon": the same transformation with no gauges
        tx = gj.ddc_muon(lr, weight_decay, binding if optimizer == "ddc_muon" else None, muon_leaves=mats,
                         adam_lr=lr, adam_weight_decay=weight_decay, vertical=vertical)
    else:
        tx = gj.ddc_adam(lr, weight_decay=weight_decay, gauges=binding, vertical=vertical)
    update = jax.jit(tx.update)
    state_a, state_b = tx.init(params_a), tx.init(params_b)
    data = torch.Generator().manual_seed(seed + 2)
    worst = 0.0
    for _ in range(steps):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(torch.from_numpy(np.array(params_a[n])))
        model.zero_grad()
        loss_fn(model, data).backward()
        grads_a = {n: jnp.asarray(p.grad.numpy()) for n, p in model.named_parameters()}
        grads_b = act(grads_a, covector=True)
        u, state_a = update(grads_a, state_a, params_a)
        params_a = optax.apply_updates(params_a, u)
        u, state_b = update(grads_b, state_b, params_b)
        params_b = optax.apply_updates(params_b, u)
        image = act(params_a)
        num = sum(float(jnp.sum((params_b[p] - image[p]) ** 2)) for p in binding.paths)
        den = sum(float(jnp.sum(image[p] ** 2)) for p in binding.paths)
        worst = worse(worst, math.sqrt(num / den))
    return worst


def verify(backend: str = "torch", dtype: str = "float32", steps: int = 50, names=None, control: bool = True,
           vertical: str = "freeze", out=print, optimizer: str = "adam") -> bool:
    """Print ``<name> <max_rel_dev> <PASS|FAIL>`` per construction (and the AdamW control)."""
    if backend not in ("torch", "jax"):
        raise ValueError(f"backend {backend!r}: choose 'torch' or 'jax'")
    run = run_protocol if backend == "torch" else run_protocol_jax
    if optimizer not in ("adam", "muon"):
        raise ValueError(f"optimizer {optimizer!r}: choose 'adam' or 'muon'")
    ours, peer = ("ddc_adam", "adamw") if optimizer == "adam" else ("ddc_muon", "muon")
    if dtype not in THRESHOLDS:
        raise ValueError(f"dtype {dtype!r}: choose from {sorted(THRESHOLDS)}")
    tol = THRESHOLDS[dtype]
    ok = True
    for c in _constructions():
        if names and c.name not in names:
            continue
        dev = run(c, ours, dtype, steps, vertical=vertical)
        passed = dev < tol
        ok &= passed
        out(f"{c.name} {dev:.3e} {'PASS' if passed else 'FAIL'}")
        if control:
            dev = run(c, peer, dtype, steps)
            failed = dev >= tol
            ok &= failed
            out(f"{peer}:{c.name} {dev:.3e} {'FAIL (expected)' if failed else 'PASS (control should fail!)'}")
    return ok
