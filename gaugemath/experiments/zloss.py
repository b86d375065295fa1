"""Z-loss and the cross-entropy shift gauge (the paper's Fig. 12: z-loss "inflates the gauge mode it is meant
to contain").

Classifier ``z = W relu(A x + a) + b`` (``W``: ``(classes, hidden)``, ``b``: ``(classes,)``) on a Gaussian mixture
(``classes`` centres in ``d_in`` dimensions), full batch. The head is bound to the ``ce_shift`` gauge
(``GaugeSpec("ce_shift", {"W": "2.weight", "b": "2.bias"})``): for ``c ∈ R^hidden``, ``s ∈ R``::

    W[i, :] ↦ W[i, :] + cᵀ,  b_i ↦ b_i + s     (every class i)   ⇒   z_i ↦ z_i + cᵀh + s

The cross-entropy ``CE(z, y) = lse(z) − z_y`` is invariant; its *gauge mode* is the class-mean logit
``m(x) = mean_i z_i(x)``. The loss trained is ``CE + λ · mean_x lse(z(x))²`` (z-loss). Since
``lse(z) = lse(z − m) + m``, the z-loss is *not* invariant: its gradient along the shift generators is
``2λ · mean_x lse(z)`` per direction, pulling ``m`` toward ``−lse(z − m)``. What each optimizer does with it:

* AdamW normalises per coordinate, so even without z-loss the (centred) CE gradient of ``b`` and ``W``
  becomes an uncentred step and ``m`` random-walks; with z-loss its tiny ``λ`` gradient is normalised
  to a full ``lr``-sized step along the gauge;
* DDCAdam ``vertical="freeze"`` drops the vertical component: the shift mode never moves, with or without
  z-loss (z-loss then acts only through its horizontal part);
* DDCAdam ``vertical="sgd"`` applies the raw vertical gradient (``lr · 2λ lse``: a slow drift);
* DDCAdam ``vertical="adam"`` normalises it per orbit coordinate (unit steps along the gauge, like AdamW).

Logged per run: CE, accuracy, ``mean_x m(x)`` (the gauge mode), ``mean_x lse(z)``, the charges of the shift
families (:func:`gaugemath.observe.charges`: ``Q = 2⟨n, θ⟩``, the class sums of ``W``'s columns and of ``b``)
and the update's vertical fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gaugemath.backends.torch import GaugeSpec, bind
from gaugemath.observe import bound_tensors, charges

from ._common import OptimizerConfig, RunDir, configured, markdown_table, seed_everything
from ._harness import Arm, Panel, build_optimizer, finish, plot_curves, records_of, sweep
from ._harness import train as train_loop

SPECS = [GaugeSpec("ce_shift", {"W": "2.weight", "b": "2.bias"}, name="head")]


@dataclass(frozen=True)
class ZLossConfig:
    d_in: int = 16
    hidden: int = 32
    classes: int = 8
    n: int = 512
    spread: float = 1.5
    zloss: tuple[float, ...] = (0.0, 1e-3)
    verticals: tuple[str, ...] = ("freeze", "sgd", "adam")
    steps: int = 600
    log_every: int = 20
    seeds: tuple[int, ...] = (0, 1)
    optimizers: tuple[str, ...] = ("adamw", "ddcadam")
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-2, weight_decay=0.0))


SCALES = {
    "cpu": ZLossConfig(),
    "paper": ZLossConfig(d_in=64, hidden=256, classes=100, n=20_000, zloss=(0.0, 1e-4, 1e-3), steps=10_000,
                         log_every=100, seeds=tuple(range(5)), optim=OptimizerConfig(lr=1e-3, weight_decay=0.0)),
}


def configure(scale: str = "cpu", **overrides: Any) -> ZLossConfig:
    """The preset for ``scale`` with ``overrides`` (``None`` values ignored)."""
    return configured("zloss", SCALES, scale, overrides)


def dataset(cfg: ZLossConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: ``x`` ``(n, d_in)`` = centre of class ``y`` (``spread · N(0, I)``, fixed by ``seed``)
    + ``N(0, I)``; ``y`` ``(n,)`` uniform classes."""
    gen = torch.Generator().manual_seed(50_000 + seed)
    centres = cfg.spread * torch.randn(cfg.classes, cfg.d_in, generator=gen)
    y = torch.randint(0, cfg.classes, (cfg.n,), generator=gen)
    return centres[y] + torch.randn(cfg.n, cfg.d_in, generator=gen), y


def objective(z: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """``mean CE(z, y) + λ · mean lse(z)²``; ``z``: ``(N, classes)``, ``y``: ``(N,)``."""
    return F.cross_entropy(z, y) + lam * torch.logsumexp(z, dim=-1).pow(2).mean()


def arms(cfg: ZLossConfig) -> list[Arm]:
    """``adamw``, ``muon`` as they are; ``ddcadam``/``ddcmuon`` once per vertical policy (``ddcadam[sgd]``, …)."""
    out = []
    for name in cfg.optimizers:
        if name.startswith("ddc"):
            out += [Arm(f"{name}[{v}]", name, (("vertical", v),)) for v in cfg.verticals]
        else:
            out.append(Arm(name, name))
    return out


def _run_one(cfg: ZLossConfig, arm: Arm, seed: int, run: RunDir, bar: Any) -> list[dict[str, Any]]:
    x, y = dataset(cfg, seed)
    out = []
    for lam in cfg.zloss:
        seed_everything(seed)
        model = nn.Sequential(nn.Linear(cfg.d_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.classes))
        binding = bind(model, SPECS)
        opt = build_optimizer(arm, model, cfg.optim, binding)

        def evaluate(m: nn.Module, binding=binding) -> dict[str, float]:
            with torch.no_grad():
                z = m(x)
                q = charges(binding, bound_tensors(binding))
                return {"ce": float(F.cross_entropy(z, y)), "acc": float((z.argmax(-1) == y).float().mean()),
                        "mean_logit": float(z.mean()), "abs_mean_logit": float(z.mean().abs()),
                        "lse": float(torch.logsumexp(z, -1).mean()),
                        "shift_charge": float(sum(v.pow(2).sum() for v in q.values()).sqrt())}

        history, _ = train_loop(model, opt, lambda m, step, lam=lam: objective(m(x), y, lam), steps=cfg.steps,
                                log_every=cfg.log_every, evaluate=evaluate, binding=binding,
                                tag={"arm": arm.label, "seed": seed, "zloss": lam}, run=run, bar=bar)
        first, last = history[0], history[-1]
        out.append({"arm": arm.label, "seed": seed, "zloss": lam, "final_ce": last["ce"], "final_acc": last["acc"],
                    "final_mean_logit": last["mean_logit"],
                    "mean_logit_change": last["mean_logit"] - first["mean_logit"],
                    "final_lse": last["lse"], "shift_charge_drift": last["charge_drift_max"],
                    "vertical_fraction_mean": sum(r["vertical_fraction"] for r in history[1:]) / (len(history) - 1)})
    return out


KEYS = ("final_ce", "final_acc", "mean_logit_change", "shift_charge_drift", "final_lse", "vertical_fraction_mean")


def summarise(cfg: ZLossConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm and z-loss weight: the seed means of :data:`KEYS`."""
    rows = []
    for a in arms(cfg):
        for lam in cfg.zloss:
            rs = [r for r in runs if r["arm"] == a.label and r["zloss"] == lam]
            rows.append({"arm": a.label, "zloss": lam, "seeds": len(rs),
                         **{k: sum(r[k] for r in rs) / len(rs) for k in KEYS}})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(["arm", "z-loss λ", "seeds", "CE", "train acc", "Δ mean logit",
                           "shift charge drift ‖Q−Q₀‖/‖Q₀‖", "mean lse(z)", "update vertical fraction"],
                          [[r["arm"], f"{r['zloss']:g}", r["seeds"]] + [r[k] for k in KEYS] for r in rows])


def run(cfg: ZLossConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Every arm × seed × z-loss weight; writes ``out/{config,metrics,results}.json*`` and ``zloss.png``."""
    rundir, nested = sweep("zloss", cfg, out, arms(cfg), lambda a, s, r, b: _run_one(cfg, a, s, r, b),
                           cfg.steps * len(cfg.zloss), show_progress)
    runs = [r for group in nested for r in group]
    rows = summarise(cfg, runs)
    panels = [Panel("ce", "cross-entropy"),
              Panel("mean_logit", "mean_x mean_i z_i", log=False, title="gauge mode (mean logit)"),
              Panel("lse", "mean_x lse(z)", log=False, title="log-partition"),
              Panel("vertical_fraction", "‖P_V u‖/‖u‖", title="update vertical fraction")]
    fig = plot_curves(records_of(rundir), panels,
                      rundir.figure_path("zloss"), ncols=4, style=lambda r: "-" if r["zloss"] == 0 else "--",
                      suptitle=f"CE (solid) vs CE + {max(cfg.zloss):g}·lse² (dashed), {cfg.classes} classes")
    return finish(rundir, runs, rows, table(rows), [fig])
