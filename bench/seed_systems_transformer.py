"""Experiment: the seed systems on a bound transformer, the CPU grokking GPT (issue 22: "a run on a bound transformer").

    python bench/seed_systems_transformer.py [--seeds 3] [--steps 1200] [--arms adamw ddcadam rv-adamw sgdm lion]

The grokking task (mod 59, 1-layer LayerNorm/ReLU/RoPE GPT, full batch, lr 3e-3, betas 0.9/0.98, weight decay 1.0),
three arms per seed: AdamW, DDCAdam, and AdamW inside :class:`~gaugemath.rotational.RotationalWrapper` (the rows of
the attention and MLP matrices as rotational vectors, in a param group of their own; the rest as AdamW). Printed,
mean ± sd over seeds:

* training: steps to 95 % test accuracy (evaluated every 50 steps; ``—`` if never), final test accuracy, final
  train loss;
* rotational equilibrium: the per-step angle of the matrices' rows over the last 200 steps against the arm's
  ``η̂_r`` (AdamW ``√(2ηλ(1−β₁)/(1+β₁))``, SGDM ``√(2ηλ/(1+α))``, Lion ``√(πηλK)``) — these weights are not
  scale-invariant (the seed's "scale-sensitive" case, App. L: a radial gradient acts as extra decay), so the formula
  is the reference point, not an expected equality. Two more arms, not run by default: ``sgdm``
  (``torch.optim.SGD``, lr 0.1, momentum 0.9, weight decay 3e-3) and ``lion`` (lr 1e-3, betas 0.9/0.99, weight decay
  3, :class:`rotational_equilibrium.Lion`), both shrinking the weights by AdamW's 3e-3 per step;
* two more arms with [K]'s learnable gain on the hidden matrices (``W = g ⊙ ω/‖ω‖`` per row, ω's rows exactly
  scale-invariant, the gains without decay), not run by default: ``adamw+gain`` (plain AdamW) and
  ``rv-adamw+gain`` (the wrapper on ω's rows); their angle is ω's;
* collapse: ReLU units at the symmetric point (≤ 1e-6) at the end, and surviving units Eq. 20 favours collapsing
  (``γ_k < λ/2`` with the arm's own ``λ``, ``ℓ₀`` the train loss; for decoupled decay a reference, not the
  optimizer's objective);
* Noether (AdamW): over the last 100 steps, the largest metric current ``⟨P^{-1}Δθ, X⟩`` and Euclidean current
  ``⟨Δθ, X⟩`` per kind of family, each relative to its terms' size (``|X|ᵀ|·|``): translations keep the metric one
  at round-off (decay aside: ``−ηλ⟨P^{-1}θ, X⟩``, included in the prediction), the Euclidean ones are first order.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from gaugemath.backends.torch import DDCAdam, bind
from rotational_equilibrium import Lion  # (bench/: the seed's Eq. 52–54)

from gaugemath.collapse import collapse_thresholds, collapsed
from gaugemath.experiments.grokking import SCALES, _model, dataset
from gaugemath.noether import adamw_metric_current, adamw_preconditioner_inverse, current, current_size
from gaugemath.rotational import RotationalWrapper, RotationMeter, equilibrium, learnable_gain, rows

#: the extra arms: (equilibrium kind, lr, weight decay, optimizer factory), each shrinking the weights by AdamW's
#: 3e-3 per step (SGDM: ηλ/(1−α), its decay runs through the momentum; Lion: ηλ, with Lion's usual lr ≈ AdamW's / 3)
EXTRA = {"sgdm": ("sgdm", 0.1, 3e-3, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=3e-3)),
         "lion": ("lion", 1e-3, 3.0, lambda ps: Lion(ps, lr=1e-3, betas=(0.9, 0.99), weight_decay=3.0))}
MATRICES = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight", "mlp.fc_in.weight",
            "mlp.fc_out.weight")


#: arms on the hidden matrices reparameterised with [K]'s learnable gain (:func:`gaugemath.rotational.learnable_gain`)
GAINED = ("adamw+gain", "rv-adamw+gain")


def _optimizer(arm, model, binding, cfg, mats=None):
    o = cfg.optim
    if arm == "ddcadam":
        return DDCAdam(model.parameters(), binding=binding, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if arm == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if arm in EXTRA:
        return EXTRA[arm][3](model.parameters())
    if arm in GAINED:  # [K]'s recipe: the rows of ω (W = g ⊙ ω/‖ω‖) with decay, the gains without
        omegas, gains = mats
        ids = {id(p) for p in omegas + gains}
        rest = [p for p in model.parameters() if id(p) not in ids]
        inner = torch.optim.AdamW([{"params": omegas}, {"params": gains, "weight_decay": 0.0}, {"params": rest}],
                                  lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        return inner if arm == "adamw+gain" else RotationalWrapper(inner, rows(*omegas), inner_kind="adamw")
    mats = [p for n, p in model.named_parameters() if n.endswith(MATRICES)]
    ids = {id(p) for p in mats}
    rest = [p for p in model.parameters() if id(p) not in ids]
    inner = torch.optim.AdamW([{"params": mats}, {"params": rest}], lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return RotationalWrapper(inner, rows(*mats), inner_kind="adamw")


def run(arm: str, seed: int, steps: int):
    cfg = SCALES["cpu"]
    x, y, xt, yt = dataset(cfg.modulus, cfg.train_fraction, seed)
    model = _model(cfg, seed).double()
    binding = bind(model)
    if arm in GAINED:  # (after bind: the binding then names the replaced weights; collapse is not measured here)
        pairs = [learnable_gain(model.get_submodule(n.rsplit(".", 1)[0]))
                 for n, _ in list(model.named_parameters()) if n.endswith(MATRICES)]
        mats = [o for o, _ in pairs]
        opt = _optimizer(arm, model, binding, cfg, (mats, [g for _, g in pairs]))
    else:
        opt = _optimizer(arm, model, binding, cfg)
        mats = [p for n, p in model.named_parameters() if n.endswith(MATRICES)]
    meter = RotationMeter(rows(*mats))
    params = [p for _, p in binding.params]
    grok, noether = None, {}
    for step in range(steps):
        if step % 50 == 0:
            with torch.no_grad():
                acc = float((model(xt)[:, -1].argmax(-1) == yt).double().mean())
            grok = step if grok is None and acc >= 0.95 else grok
        opt.zero_grad()
        F.cross_entropy(model(x)[:, -1], y).backward()
        before = [p.detach().clone() for p in params]
        timed = step >= steps - 200
        if timed:
            meter.before()
        opt.step()
        if timed:
            meter.after()
        if arm == "adamw" and step >= steps - 100:
            st = [opt.state[p] for p in params]
            count, b2 = int(st[0]["step"]), cfg.optim.betas[1]
            p_inv = adamw_preconditioner_inverse([s["exp_avg_sq"] for s in st], count, b2)
            delta = [p.detach() - b for p, b in zip(params, before)]
            metric = current(binding, before, [q * d for q, d in zip(p_inv, delta)])
            want = adamw_metric_current(binding, before, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                                        count, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas)
            euclid = current(binding, before, delta)
            size = current_size(binding, before, [q * (b.abs() + p.detach().abs()) for q, b, p in
                                                  zip(p_inv, before, params)])
            size_e = current_size(binding, before, delta)
            for f in binding.families:
                if f.kind == "head":
                    continue
                k = f.kind
                law = float(((metric[f.name] - want[f.name]).abs() / size[f.name].clamp_min(1e-300)).max())
                rel_e = float((euclid[f.name].abs() / size_e[f.name].clamp_min(1e-300)).max())
                old = noether.get(k, (0.0, 0.0))
                noether[k] = (max(old[0], law), max(old[1], rel_e))
    with torch.no_grad():
        acc = float((model(xt)[:, -1].argmax(-1) == yt).double().mean())
        loss = float(F.cross_entropy(model(x)[:, -1], y))
    summ = meter.summary(0)
    if arm in GAINED:
        return {"grok": grok, "acc": acc, "loss": loss, "angle": float(summ["angle"].mean()), "dead": None,
                "favoured": None, "units": 0, "noether": noether}
    relu = next(f for f in binding.families if "relu" in f.family.gauge or "relu" in f.name)
    dead = collapsed(binding)[relu.name]
    gam = collapse_thresholds(model, binding, lambda m: F.cross_entropy(m(x)[:, -1], y))[relu.name]
    # the arm's own coupled-decay reference ℓ₀ + (λ/2)‖θ‖² (SGDM's decay is coupled; AdamW's and Lion's decoupled)
    wd = EXTRA[arm][2] if arm in EXTRA else cfg.optim.weight_decay
    favoured = int(((gam < wd / 2) & ~dead).sum())
    return {"grok": grok, "acc": acc, "loss": loss, "angle": float(summ["angle"].mean()), "dead": int(dead.sum()),
            "favoured": favoured, "units": relu.units, "noether": noether}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", nargs="+", default=["adamw", "ddcadam", "rv-adamw"],
                    choices=["adamw", "ddcadam", "rv-adamw", *GAINED, *EXTRA])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    o = SCALES["cpu"].optim
    eta_r = equilibrium("adamw", o.lr, o.weight_decay, 64, betas=o.betas).angular_update
    print(f"grokking GPT (fp64), {args.steps} steps, seeds 0..{args.seeds - 1}; AdamW's η̂_r = {eta_r:.4e}")

    def pm(vals, fmt=".3f"):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "—"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.fmean(vals):{fmt}} ± {sd:{fmt}} ({len(vals)})"

    for arm in args.arms:
        res = [run(arm, s, args.steps) for s in range(args.seeds)]
        if arm in EXTRA:
            kind, lr, wd, _ = EXTRA[arm]
            pred = equilibrium(kind, lr, wd, 64, betas=(0.9, 0.99)).angular_update
            print(f"          {arm}: predicted η̂_r = {pred:.4e}")
        print(f"{arm:9s} grok@ {pm([r['grok'] for r in res], '.0f')}  test acc {pm([r['acc'] for r in res])}  "
              f"train loss {pm([r['loss'] for r in res], '.2e')}  row angle/step {pm([r['angle'] for r in res], '.3e')}"
              f"  collapsed {pm([r['dead'] for r in res], '.1f')} of {res[0]['units']}, Eq.20 favours "
              f"{pm([r['favoured'] for r in res], '.1f')}")
        if arm == "adamw":
            for kind in sorted(res[0]["noether"]):
                law = max(r["noether"][kind][0] for r in res)
                euc = min(r["noether"][kind][1] for r in res)
                print(f"          Noether {kind:9s}: metric-current law residual ≤ {law:.1e} (relative), Euclidean "
                      f"current ≥ {euc:.1e} (relative)")


if __name__ == "__main__":
    main()
