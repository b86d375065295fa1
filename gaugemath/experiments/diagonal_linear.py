"""Diagonal linear network on sparse regression: the init-scale implicit bias (Pesme et al.; the paper's Fig. 15).

Data: ``X`` ``(n, d)`` standard normal with ``n < d``, a ``k``-sparse ``β*`` (``±1`` on a random support),
``y = X β*`` (no noise), full-batch loss ``½ mean (f(X) − y)²``. Model (:class:`DiagonalLinear`): per coordinate
``i`` one *linear* hidden unit reading only ``x_i``::

    f(x) = Σ_i v_i (u_i x_i + b_i),     β = u ⊙ v,

stored as ``w_in`` ``(d, 1)`` (row ``i`` = ``u_i``), ``b_in`` ``(d,)`` and ``w_out`` ``(1, d)`` (column ``i`` =
``v_i``). It is the ``relu_rescale`` construction with the identity (degree-1 homogeneous) activation and a
*diagonal* ``W_in`` stored compactly: per unit ``(u_i, b_i, v_i) ↦ (α u_i, α b_i, v_i / α)`` leaves ``f``
unchanged, and the family's slices (rows of ``W_in``/``b_in``, columns of ``W_out``) are exactly the per-unit
tensors, so the catalogue family applies as is. It is bound explicitly as ``relu_rescale.anchor``
(:func:`binding_of`), Noether charge ``Q_i = u_i² + b_i² − v_i²``. ``b`` is an extra intercept the Pesme model
does not have (it contributes ``Σ_i b_i v_i`` to every prediction); it starts at 0 and the target has none.

Init (Pesme et al.'s ``u ⊙ v`` parametrisation): ``u_0 = √2 α``, ``v_0 = v_init · α`` (all coordinates), so
``Q_i ≈ 2α²`` and ``β_0 ≈ √2 v_init α²``. ``v_0 = 0`` as in the paper would make *both* frames of the family
degenerate (balance ``(|v|/‖(u, b)‖)^{1/2}`` and anchor ``|v|`` vanish), so ``v_init`` is small but non-zero.
Small ``α`` → gradient flow tends to the minimum-ℓ1 interpolator (sparse recovery); large ``α`` → the
minimum-ℓ2 interpolator (``X⁺y``, whose recovery error is logged as ``l2_reference``).

Arms: every optimizer (``adamw``, ``ddcadam``, and the charge-conserving ``gd``) at every ``α`` of ``alphas``,
labelled ``opt[α=…]``. Logged per run: train/test loss, recovery error ``‖β − β*‖/‖β*‖``, off-support
ℓ1 mass ``‖β_{S^c}‖₁/‖β‖₁``, the gauge observables of :func:`~gaugemath.experiments._harness.train`
(vertical fraction, orbit drift, charge drift ``‖Q − Q₀‖/‖Q₀‖``, orbit-position drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaugemath.backends.torch import Binding, GaugeSpec, bind

from ._common import OptimizerConfig, RunDir, configured, markdown_table, seed_everything
from ._harness import (
    Arm,
    Panel,
    arms_for,
    build_optimizer,
    finish,
    gauge_summary,
    mean_final,
    plot_curves,
    records_of,
    sweep,
    train,
)


@dataclass(frozen=True)
class DiagonalLinearConfig:
    d: int = 100
    n_train: int = 40
    k: int = 5
    n_test: int = 500
    alphas: tuple[float, ...] = (0.01, 1.0)
    v_init: float = 0.1
    steps: int = 1500
    log_every: int = 50
    seeds: tuple[int, ...] = (0,)
    optimizers: tuple[str, ...] = ("adamw", "ddcadam")
    gd_reference: bool = True
    gd_lr: float = 0.05
    frame: str = "anchor"
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-3, weight_decay=0.0))


SCALES = {
    "cpu": DiagonalLinearConfig(),
    "paper": DiagonalLinearConfig(d=1000, n_train=200, k=10, n_test=2000, alphas=(0.001, 0.01, 0.1, 1.0),
                                  steps=50000, log_every=500, seeds=tuple(range(5))),
}


def configure(scale: str = "cpu", **overrides: Any) -> DiagonalLinearConfig:
    """The preset for ``scale`` with ``overrides`` (``None`` values ignored)."""
    return configured("diagonal_linear", SCALES, scale, overrides)


class DiagonalLinear(nn.Module):
    """``f(x) = Σ_i w_out[0, i] (w_in[i, 0] x_i + b_in[i])``: a width-``d`` linear unit per coordinate."""

    def __init__(self, d: int, alpha: float, v_init: float):
        super().__init__()
        self.w_in = nn.Parameter(torch.full((d, 1), math.sqrt(2.0) * alpha))
        self.b_in = nn.Parameter(torch.zeros(d))
        self.w_out = nn.Parameter(torch.full((1, d), v_init * alpha))

    def beta(self) -> torch.Tensor:
        """The linear predictor ``β = u ⊙ v`` ``(d,)`` (the intercept ``b·v`` excluded)."""
        return self.w_in[:, 0] * self.w_out[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w_in[:, 0] + self.b_in) @ self.w_out.T


def binding_of(model: DiagonalLinear, frame: str = "anchor") -> Binding:
    """The per-coordinate rescale, bound explicitly (``bind`` does not detect this model)."""
    return bind(model, [GaugeSpec(f"relu_rescale.{frame}", {"W_in": "w_in", "b_in": "b_in", "W_out": "w_out"},
                                  name="diag")])


def dataset(cfg: DiagonalLinearConfig, seed: int) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test, β*)``; ``y`` is ``(N, 1)``."""
    gen = torch.Generator().manual_seed(40_000 + seed)
    beta = torch.zeros(cfg.d)
    support = torch.randperm(cfg.d, generator=gen)[:cfg.k]
    beta[support] = torch.randint(0, 2, (cfg.k,), generator=gen).float() * 2 - 1
    x = torch.randn(cfg.n_train + cfg.n_test, cfg.d, generator=gen)
    y = (x @ beta)[:, None]
    return x[:cfg.n_train], y[:cfg.n_train], x[cfg.n_train:], y[cfg.n_train:], beta


def l2_reference(x: torch.Tensor, y: torch.Tensor, beta: torch.Tensor) -> float:
    """Recovery error of the minimum-ℓ2 interpolator ``X⁺y`` (the large-α limit)."""
    b = torch.linalg.pinv(x.double()) @ y.double()[:, 0]
    return float((b - beta.double()).norm() / beta.double().norm())


def arms(cfg: DiagonalLinearConfig) -> list[Arm]:
    return [Arm(f"{a.label}[α={alpha:g}]", a.optimizer, a.options)
            for alpha in cfg.alphas for a in arms_for(cfg.optimizers, cfg.gd_reference)]


def _alpha(label: str) -> float:
    return float(label.split("[α=")[1].rstrip("]"))


def _run_one(cfg: DiagonalLinearConfig, arm: Arm, seed: int, run: RunDir, bar: Any) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te, beta_star = dataset(cfg, seed)
    seed_everything(seed)
    model = DiagonalLinear(cfg.d, _alpha(arm.label), cfg.v_init)
    binding = binding_of(model, cfg.frame)
    opt = build_optimizer(arm, model, cfg.optim, binding, cfg.gd_lr)
    off = torch.ones(cfg.d, dtype=torch.bool)
    off[beta_star != 0] = False

    def evaluate(m: DiagonalLinear) -> dict[str, Any]:
        with torch.no_grad():
            b = m.beta()
            return {"train_loss": float((m(x_tr) - y_tr).pow(2).mean() / 2),
                    "test_loss": float((m(x_te) - y_te).pow(2).mean() / 2),
                    "recovery_error": float((b - beta_star).norm() / beta_star.norm()),
                    "off_support_l1": float(b[off].abs().sum() / b.abs().sum().clamp_min(1e-30)),
                    "intercept": float(m.b_in @ m.w_out[0])}

    history, _ = train(model, opt, lambda m, step: (m(x_tr) - y_tr).pow(2).mean() / 2, steps=cfg.steps,
                       log_every=cfg.log_every, evaluate=evaluate, binding=binding,
                       tag={"arm": arm.label, "seed": seed}, run=run, bar=bar)
    last = history[-1]
    return {**gauge_summary(arm, seed, history), "final_recovery_error": last["recovery_error"],
            "final_off_support_l1": last["off_support_l1"], "final_intercept": last["intercept"]}


KEYS = ("final_train_loss", "final_recovery_error", "final_off_support_l1", "vertical_fraction_mean",
        "final_orbit_drift", "final_charge_drift", "final_phi_drift")


def summarise(arm_list: list[Arm], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: the seed means of :data:`KEYS`."""
    return [{"arm": a.label, "seeds": sum(r["arm"] == a.label for r in runs),
             **{k: mean_final(runs, a.label, k) for k in KEYS}} for a in arm_list]


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(["arm", "seeds", "train loss", "recovery ‖β−β*‖/‖β*‖", "off-support ℓ1 share",
                           "vertical fraction (mean)", "orbit drift", "charge drift ‖Q−Q₀‖/‖Q₀‖",
                           "orbit position drift mean abs(φ−φ₀)"],
                          [[r["arm"], r["seeds"]] + [r[k] for k in KEYS] for r in rows])


def run(cfg: DiagonalLinearConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Every α × arm × seed; writes ``out/{config,metrics,results}.json*`` and ``diagonal_linear.png``."""
    arm_list = arms(cfg)
    rundir, runs = sweep("diagonal_linear", cfg, out, arm_list, lambda a, s, r, b: _run_one(cfg, a, s, r, b),
                         cfg.steps, show_progress)
    rows = summarise(arm_list, runs)
    l2 = [l2_reference(*[t for i, t in enumerate(dataset(cfg, s)) if i in (0, 1, 4)]) for s in cfg.seeds]
    styles = dict(zip(cfg.alphas, ("-", "--", ":", "-.")))
    records = [{**r, "opt": r["arm"].split("[")[0], "alpha": _alpha(r["arm"])} for r in records_of(rundir)]
    names = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
    legend = ", ".join(f"{names[s]} α={a:g}" for a, s in styles.items())
    fig = plot_curves(records, [Panel("train_loss", "train loss"),
                                Panel("recovery_error", "‖β−β*‖/‖β*‖", title="recovery error",
                                      hline=sum(l2) / len(l2)),
                                Panel("off_support_l1", "share", log=False, title="off-support ℓ1 share of β"),
                                Panel("vertical_fraction", "‖P_V u‖/‖u‖", title="update vertical fraction"),
                                Panel("charge_drift_max", "‖Q−Q₀‖/‖Q₀‖", title="charge drift"),
                                Panel("orbit_drift_max", "‖θ − h(θ)·θ‖/‖θ‖", title="distance from slice")],
                      rundir.figure_path("diagonal_linear"), group="opt", style=lambda r: styles[r["alpha"]],
                      ncols=3, suptitle=f"diagonal linear net, d={cfg.d}, n={cfg.n_train}, k={cfg.k}; {legend}; "
                                        f"grey dotted line: min-ℓ2 interpolator")
    return finish(rundir, runs, rows, table(rows), [fig], l2_reference=l2)
