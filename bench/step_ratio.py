"""Per-tensor step size of DDCAdam relative to AdamW, for each frame choice (issue 19's measurement).

    python bench/step_ratio.py [--model demo|cpu|tiny] [--steps 3] [--lr 1e-3] [--after N] [--threads 1]
                               [--identity]

From one initialisation (``torch.manual_seed(0)``) and the same ``--steps`` gradients (one random
batch each, computed once at the initial parameters and fed to every optimizer alike, so only the
optimizers differ), each optimizer takes ``--steps`` steps with ``lr``, no weight decay. Printed per
bound tensor: ``‖θ_T − θ_0‖`` of DDCAdam (frames ``balanced`` and ``per_family``) over AdamW's, and
the worst ratio (max of r and 1/r) over the tensors outside the CE head (the head is excluded: AdamW's
head step is mostly the uniform logit shift that DDCAdam removes). ``--after N`` first trains the model
``N`` steps with AdamW (lr 3e-3, as the demo) and measures from there, with fresh optimizer states.

``--identity`` adds a counterfactual column, ``identity``: the balanced binding's step with the joint
balance replaced by the identity frame. The two-sided scale families' canonical point is then the current
point, so on the tensors only they act on, Adam runs in AdamW's own coordinates and only the horizontal
projection differs from AdamW; the other families (RoPE planes, heads, the CE shift) keep their own frames.
It is *not* equivariant and exists only to measure how much of a scaled tensor's step ratio the projection
alone causes.

Models: ``demo`` is the grokking demo's GPT (LayerNorm, ReLU, RoPE; ``gaugemath demo``),
``cpu`` is ``gpt_small_cpu()`` with ``mlp="relu", norm="layernorm"`` (the widths of issue 19), ``tiny``
is ``tiny_gpt()`` (RMSNorm, SwiGLU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
import torch.nn.functional as F
from gaugemath.backends.torch import DDCAdam, bind

from gaugemath.models import GPT, gpt_small_cpu, tiny_gpt


def _model(name: str) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    if name == "demo":
        return GPT(60, 64, 1, 4, 256, norm="layernorm", mlp="relu", rope=True), 60
    if name == "cpu":
        m = gpt_small_cpu(mlp="relu", norm="layernorm")
        return m, m.vocab if hasattr(m, "vocab") else m.head.weight.shape[0]
    m = tiny_gpt()
    return m, m.head.weight.shape[0]


def _loss(model, vocab: int, gen: torch.Generator):
    idx = torch.randint(0, vocab, (8, 17), generator=gen)
    logits = model(idx[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo", choices=["demo", "cpu", "tiny"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--after", type=int, default=0, help="AdamW steps before measuring")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--identity", action="store_true",
                    help="add the (non-equivariant) identity-frame counterfactual column")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, vocab = _model(args.model)
    if args.after:
        warm = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98))
        gen = torch.Generator().manual_seed(7)
        for _ in range(args.after):
            warm.zero_grad()
            _loss(model, vocab, gen).backward()
            warm.step()
    gen = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(args.steps):
        model.zero_grad()
        _loss(model, vocab, gen).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}

    def run(make) -> dict[str, float]:
        m = copy.deepcopy(model)
        opt = make(m)
        for g in grads:
            for n, p in m.named_parameters():
                p.grad = g[n].clone()
            opt.step()
        return {n: float((p.detach() - theta0[n]).norm()) for n, p in m.named_parameters()}

    adamw = run(lambda m: torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.0))
    frames = ("balanced", "per_family")
    ddc = {f: run(lambda m, f=f: DDCAdam(m.parameters(), binding=bind(m, frames=f), lr=args.lr, weight_decay=0.0))
           for f in frames}
    if args.identity:
        with _identity_frames():
            ddc["identity"] = run(lambda m: DDCAdam(m.parameters(), binding=bind(m), lr=args.lr, weight_decay=0.0))
        frames = (*frames, "identity")
    binding = bind(copy.deepcopy(model))
    bound = [n for n, _ in binding.params]
    shifts = [f for f in binding.families if f.family.gauge == "ce_shift"]
    heads = {n for n in bound if any(n in _names(binding, f) for f in shifts)}
    print(f"model {args.model}, {args.steps} steps, lr {args.lr:g}, after {args.after} AdamW steps; "
          f"{len(binding.families)} orbit families bound, {len(binding.refusals)} refused")
    print(f"{'tensor':40s} " + " ".join(f"{f:>11s}" for f in frames))
    worst = dict.fromkeys(frames, 1.0)
    for n in bound:
        ratios = [ddc[f][n] / adamw[n] if adamw[n] else float("nan") for f in frames]
        mark = "  (CE head)" if n in heads else ""
        print(f"{n:40s} " + " ".join(f"{r:11.3f}" for r in ratios) + mark)
        if n not in heads:
            for f, r in zip(frames, ratios):
                worst[f] = max(worst[f], r, 1 / r)
    for f in frames:
        print(f"worst per-tensor step ratio outside the CE head, frames={f}: {worst[f]:.2f}x")


@contextlib.contextmanager
def _identity_frames():
    """Within the block, DDCAdam's step uses the identity as the joint balance's frame (the counterfactual of
    ``--identity``): every two-sided scale family keeps ``h = 1`` (degenerate units masked as usual)."""
    from gaugemath.backends.torch import optim
    from gaugemath.backends.torch.balance import degenerate_sides

    real = optim.canonicalise

    class Identity:
        def __init__(self, balance):
            self.members, self.coupled = balance.members, balance.coupled

        def __bool__(self):
            return bool(self.members)

        def solve(self, batches, theta, sync=True, warm=None):
            out = {}
            for i, b in enumerate(batches):
                if b.members[0] in set(self.members):
                    side = b.family.side_sums(theta)
                    out[i] = (torch.ones_like(side[1]), degenerate_sides(side))
            out["info"] = theta[0].new_zeros((), dtype=torch.int32)
            return out

    def canonicalise(batches, theta, grad=None, balance=None, sync=True, warm=None, pivots=None):
        return real(batches, theta, grad, Identity(balance) if balance else None, sync=sync, pivots=pivots)

    optim.canonicalise = canonicalise
    try:
        yield
    finally:
        optim.canonicalise = real


def _names(binding, fam) -> set[str]:
    params = binding.params
    return {params[binding.layout.base(i)][0] for _, i in fam.members()}


if __name__ == "__main__":
    main()
