"""The fp32 floor of the Muon equivariance protocol: how much of DDCMuon's deviation any Muon shows.

    python bench/muon_floor.py [--backend torch|jax] [--frames balanced|per_family] [--steps 50] [--seed 0]
                               [names ...]

The protocol (``gaugemath.verify.run_protocol``, ddc.md §3) compares run B, started at ``fl(g·θ)`` with
gradients ``fl(D(g)^{-T} g_A)``, against ``g·`` run A. Even an optimizer whose exact-arithmetic run B
*is* ``g·`` run A sees inputs that differ from run A's by that fp32 rounding. To see what a base
optimizer makes of that rounding alone, without any gauge mismatch, run A' here is run A with its
bound parameters and gradients sent through the same fp32 operations and back:

    θ_A'(0) = fl(g⁻¹·fl(g·θ)),    grad_A'(t) = fl(D(g)ᵀ fl(D(g)^{-T} grad_A(t)))

(free tensors get run A's gradients, as in the protocol). In exact arithmetic A' = A for any
optimizer. The floor is ``max_t ‖g·θ_A'(t) − g·θ_A(t)‖ / ‖g·θ_A(t)‖`` over the bound parameters,
``g·`` applied in fp64 (the protocol's norm; no rounding added by the measurement). Columns:

* ``ddcmuon_dev``: ``run_protocol(..., "ddc_muon", "float32")`` (``--backend jax``: ``run_protocol_jax``);
* ``muon_floor``: Muon at its most precise in fp32 parameters: momentum buffer and Newton–Schulz in
  fp64 (DDCMuon's canonical arithmetic), AdamW on non-matrices, all 2-D tensors on Muon as in the
  protocol; ``ratio = ddcmuon_dev / muon_floor``;
* ``muon_fp32ns``: the same with fp32 momentum and fp32 Newton–Schulz;
* ``muon_bf16``: ``torch.optim.Muon`` as shipped (bf16 Newton–Schulz) + ``torch.optim.AdamW``;
* ``adamw_floor``: ``torch.optim.AdamW`` (reference: a base with no Newton–Schulz);
* ``ddcadam_dev``: the protocol on DDCAdam (reference: what the canonical frame costs without Muon).

``--frames``: the torch bindings' canonical points (``bind(frames=...)``; the JAX backend has one kind).

Same constructions, seeds, group element, data, lr 1e-2 and decay 0.1 as ``gaugemath verify``.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from gaugemath.backends.torch import bind, newton_schulz

import gaugemath.verify as V


class _Muon(torch.optim.Optimizer):
    """``torch.optim.Muon``'s update (Nesterov, ``√max(1, A/B)``, decoupled decay) with the momentum
    buffer and Newton–Schulz in ``dtype``; the parameter stays in its own dtype."""

    def __init__(self, params, lr, weight_decay, dtype, momentum=0.95):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))
        self.dtype = dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                st = self.state[p]
                g = p.grad.to(self.dtype)
                buf = st.setdefault("buf", torch.zeros_like(g))
                buf.lerp_(g, 1 - mom)
                o = newton_schulz(g.lerp(buf, mom), dtype=self.dtype)
                p.mul_(1 - lr * wd)
                p.add_(o.to(p.dtype), alpha=-lr * math.sqrt(max(1, p.shape[0] / p.shape[1])))


def _optimizers(kind: str, model, lr: float, wd: float) -> list:
    mats = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    adam = [torch.optim.AdamW(rest, lr=lr, weight_decay=wd)] if rest else []
    if kind == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)]
    if kind == "muon_bf16":
        return [torch.optim.Muon(mats, lr=lr, weight_decay=wd)] + adam
    dtype = {"muon_fp64": torch.float64, "muon_fp32ns": torch.float32}[kind]
    return [_Muon(mats, lr, wd, dtype)] + adam


def _act(binding, g, tensors, covector=False, inverse=False):
    """``g·t`` (``covector``: ``D(g)^{-T} t``; ``inverse``: with ``g⁻¹``), in place, in the tensors' dtype."""
    work = binding.to_work(tensors)
    ents = binding.entries(work)
    pairs = list(zip(binding.families, g))
    for fam, h in (reversed(pairs) if inverse else pairs):
        fam.act(h, ents, inverse=inverse, covector=covector)
    for i, t in enumerate(tensors):
        t.copy_(binding.from_work(i, work[i]))


def floor(construction, kind: str, steps: int = 50, seed: int = 0, lr: float = 1e-2, wd: float = 0.1,
          frames: str = "balanced") -> float:
    """Max over ``steps`` of the deviation of run A' (fp32 round trip through ``g``) from run A."""
    torch.manual_seed(seed)
    model, specs, loss_fn = construction.make()
    model = model.to(torch.float32)
    binding = bind(model, specs, check=False, frames=frames)
    model_b = copy.deepcopy(model)
    binding_b = bind(model_b, specs, check=False, frames=frames)
    with torch.no_grad():  # the protocol's group element (translations at the parameters' scale)
        theta = binding.entries(binding.to_work([p for _, p in binding.params]))
        g = V.random_element(binding, torch.Generator().manual_seed(seed + 1), torch.float32, theta=theta)
    g64 = [tuple(x.double() for x in h) if isinstance(h, tuple) else h.double() for h in g]
    bound_b = [p for _, p in binding_b.params]
    with torch.no_grad():
        _act(binding_b, g, bound_b)
        _act(binding_b, g, bound_b, inverse=True)
    opts_a, opts_b = _optimizers(kind, model, lr, wd), _optimizers(kind, model_b, lr, wd)
    ids_a = {id(p) for _, p in binding.params}
    free = [(pa, pb) for pa, pb in zip(model.parameters(), model_b.parameters()) if id(pa) not in ids_a]
    data = torch.Generator().manual_seed(seed + 2)
    worst = 0.0
    for _ in range(steps):
        for o in opts_a:
            o.zero_grad()
        loss_fn(model, data).backward()
        with torch.no_grad():
            grads = [p.grad.clone() for _, p in binding.params]
            _act(binding, g, grads, covector=True)
            _act(binding, g, grads, covector=True, inverse=True)
            for p, gr in zip(bound_b, grads):
                p.grad = gr
            for pa, pb in free:
                pb.grad = pa.grad.clone()
        for o in opts_a + opts_b:
            o.step()
        with torch.no_grad():
            ia = [p.detach().double() for _, p in binding.params]
            ib = [p.detach().double() for p in bound_b]
            _act(binding, g64, ia)
            _act(binding, g64, ib)
            num = sum(float((x - y).pow(2).sum()) for x, y in zip(ia, ib))
            den = sum(float(y.pow(2).sum()) for y in ia)
            worst = V.worse(worst, math.sqrt(num / den))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="constructions (default: all of gaugemath verify)")
    ap.add_argument("--backend", default="torch", choices=["torch", "jax"], help="for the ddcmuon_dev column")
    ap.add_argument("--frames", default="balanced", choices=["balanced", "per_family"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.backend == "torch":
        def run(c, opt):
            return V.run_protocol(c, opt, "float32", args.steps, seed=args.seed, frames=args.frames)
    else:
        def run(c, opt):
            return V.run_protocol_jax(c, opt, "float32", args.steps, seed=args.seed)
    print(f"{'construction':28s} {'ddcmuon_dev':>11s} {'muon_floor':>11s} {'ratio':>6s} "
          f"{'muon_fp32ns':>11s} {'muon_bf16':>10s} {'adamw_floor':>11s} {'ddcadam_dev':>11s}")
    for c in V._constructions():
        if args.names and c.name not in args.names:
            continue
        dev, adam = run(c, "ddc_muon"), run(c, "ddc_adam")
        f64, f32, bf16, adamw = (floor(c, k, args.steps, args.seed, frames=args.frames)
                                 for k in ("muon_fp64", "muon_fp32ns", "muon_bf16", "adamw"))
        print(f"{c.name:28s} {dev:11.3e} {f64:11.3e} {dev / f64:6.2f} {f32:11.3e} {bf16:10.3e} {adamw:11.3e} "
              f"{adam:11.3e}", flush=True)


if __name__ == "__main__":
    main()
