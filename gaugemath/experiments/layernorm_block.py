"""A synthetic LayerNorm → Linear block and its gain / consumer-column gauge (the paper's Fig. 14).

Block ``f(x) = W (γ ⊙ x̂ + β) + c`` with ``x̂ = (x − mean(x)) / std(x)`` over the ``d`` features
(``W``: ``(d_out, d)``, ``γ, β``: ``(d,)``), regression on a fixed random teacher of the same form,
``x ~ N(μ, I_d)``, full batch. Bound gauge ``norm_scale.layernorm`` (per feature ``j``, ``α > 0``)::

    (γ_j, β_j, W[:, j]) ↦ (α γ_j, α β_j, W[:, j] / α)

with charge ``Q_j = γ_j² + β_j² − ‖W[:, j]‖²`` and orbit position ``φ_j`` (minus the log of the frame).
The LayerNorm output ``a = γ ⊙ x̂ + β`` has an exact kernel: ``Σ_j x̂_j = 0`` gives
``⟨a − β, γ⁻¹⟩ = 0``, so the centred activation covariance ``C = Cov(a)`` (``d × d``) has
``λ_min(C) = 0`` with eigenvector ``γ⁻¹/‖γ⁻¹‖`` (2606.19491) — a dead direction read from ``γ`` alone,
wherever the gauge puts ``γ``. Logged per run: loss, ``λ_min(C)`` and the next eigenvalue ``λ_2(C)``,
``|cos∠(v_min, γ⁻¹)|``, the gain spread ``max γ / min |γ|``, vertical fraction, charge and orbit-position drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaugemath.backends.torch import GaugeSpec, bind

from ._common import OptimizerConfig, RunDir, configured, seed_everything
from ._harness import (
    Arm,
    Panel,
    arms_for,
    build_optimizer,
    finish,
    gauge_summary,
    plot_curves,
    records_of,
    sweep,
    train,
)
from .teacher_student import summarise as _summarise
from .teacher_student import table as _table

SPECS = [GaugeSpec("norm_scale.layernorm", {"gain": "0.weight", "bias": "0.bias", "W": "1.weight"}, name="norm")]


@dataclass(frozen=True)
class LayerNormBlockConfig:
    d: int = 16
    d_out: int = 4
    n_train: int = 256
    n_test: int = 1024
    offset: float = 1.0
    steps: int = 600
    log_every: int = 20
    seeds: tuple[int, ...] = (0, 1)
    optimizers: tuple[str, ...] = ("adamw", "ddcadam")
    gd_reference: bool = True
    gd_lr: float = 0.05
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-2, weight_decay=0.01))


SCALES = {
    "cpu": LayerNormBlockConfig(),
    "paper": LayerNormBlockConfig(d=256, d_out=64, n_train=4096, n_test=16384, steps=20000, log_every=200,
                                  seeds=tuple(range(5)), optimizers=("adamw", "ddcadam", "muon", "ddcmuon")),
}


def configure(scale: str = "cpu", **overrides: Any) -> LayerNormBlockConfig:
    """The preset for ``scale`` with ``overrides`` (``None`` values ignored)."""
    return configured("layernorm_block", SCALES, scale, overrides)


def block(d: int, d_out: int) -> nn.Sequential:
    """``LayerNorm(d) → Linear(d, d_out)``: parameters ``0.weight`` = γ, ``0.bias`` = β, ``1.weight`` = W,
    ``1.bias``."""
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d_out))


def dataset(cfg: LayerNormBlockConfig, seed: int) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: ``x ~ N(offset·1, I_d)`` ``(N, d)``, ``y`` ``(N, d_out)`` from a
    teacher block with gains ``γ* = e^{N(0, 0.5²)}``."""
    gen = torch.Generator().manual_seed(60_000 + seed)
    torch.manual_seed(70_000 + seed)
    teacher = block(cfg.d, cfg.d_out)
    with torch.no_grad():
        teacher[0].weight.copy_(torch.exp(0.5 * torch.randn(cfg.d, generator=gen)))
        x = cfg.offset + torch.randn(cfg.n_train + cfg.n_test, cfg.d, generator=gen)
        y = teacher(x)
    return x[:cfg.n_train], y[:cfg.n_train], x[cfg.n_train:], y[cfg.n_train:]


def kernel_stats(a: torch.Tensor, gain: torch.Tensor) -> dict[str, float]:
    """``λ_min``, ``λ_2`` of ``C = Cov(a)`` (``a``: ``(N, d)``), ``|cos∠(v_min, γ⁻¹)|`` and ``1 − |cos∠(v_min, γ⁻¹)|``
    (``gain`` = γ, ``(d,)``; ``v_min`` the eigenvector of ``λ_min``)."""
    a = a.detach().double()
    a = a - a.mean(0, keepdim=True)
    lam, vec = torch.linalg.eigh(a.T @ a / a.shape[0])
    inv = 1.0 / gain.detach().double()
    return {"lambda_min": float(lam[0].clamp_min(0)), "lambda_2": float(lam[1]),
            "kernel_cos": float((vec[:, 0] @ inv).abs() / inv.norm()),
            "kernel_misalignment": float(1 - (vec[:, 0] @ inv).abs() / inv.norm())}


def _run_one(cfg: LayerNormBlockConfig, arm: Arm, seed: int, run: RunDir, bar: Any) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te = dataset(cfg, seed)
    seed_everything(seed)
    model = block(cfg.d, cfg.d_out)
    binding = bind(model, SPECS)
    opt = build_optimizer(arm, model, cfg.optim, binding, cfg.gd_lr)

    def evaluate(m: nn.Sequential) -> dict[str, float]:
        with torch.no_grad():
            gain = m[0].weight
            return {"train_loss": float((m(x_tr) - y_tr).pow(2).mean()),
                    "test_loss": float((m(x_te) - y_te).pow(2).mean()),
                    "gain_spread": float(gain.abs().max() / gain.abs().min()), **kernel_stats(m[0](x_te), gain)}

    history, _ = train(model, opt, lambda m, step: (m(x_tr) - y_tr).pow(2).mean(), steps=cfg.steps,
                       log_every=cfg.log_every, evaluate=evaluate, binding=binding,
                       tag={"arm": arm.label, "seed": seed}, run=run, bar=bar)
    last = history[-1]
    return {**gauge_summary(arm, seed, history), "final_lambda_min": last["lambda_min"],
            "final_lambda_2": last["lambda_2"], "min_kernel_cos": min(r["kernel_cos"] for r in history),
            "final_gain_spread": last["gain_spread"]}


def run(cfg: LayerNormBlockConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Every arm × seed; writes ``out/{config,metrics,results}.json*`` and ``layernorm_block.png``."""
    arms = arms_for(cfg.optimizers, cfg.gd_reference)
    rundir, runs = sweep("layernorm_block", cfg, out, arms, lambda a, s, r, b: _run_one(cfg, a, s, r, b),
                         cfg.steps, show_progress)
    rows = _summarise(arms, runs)
    extra = ("final_lambda_2", "min_kernel_cos", "final_gain_spread", "final_lambda_min")
    for row, more in zip(rows, _summarise(arms, runs, extra)):
        row.update({k: more[k] for k in extra})
    from ._common import markdown_table

    text = _table(rows) + "\n\n" + markdown_table(
        ["arm", "λ₂(C) (smallest live)", "min over steps abs cos(v_min, γ⁻¹)", "gain spread max/min", "λ_min(C)"],
        [[r["arm"]] + [r[k] for k in extra] for r in rows])
    fig = plot_curves(records_of(rundir), [Panel("train_loss", "train MSE"),
                                           Panel("vertical_fraction", "‖P_V u‖/‖u‖", title="update vertical fraction"),
                                           Panel("phi_drift_max", "mean |φ − φ₀|", title="orbit position drift"),
                                           Panel("gain_spread", "max γ / min γ", title="gain spread"),
                                           Panel("lambda_2", "λ₂(C)", title="smallest live activation eigenvalue"),
                                           Panel("kernel_misalignment", "1 − |cos∠(v_min, γ⁻¹)|",
                                                 title="kernel of C is γ⁻¹ (0 = exact)")],
                      rundir.figure_path("layernorm_block"), ncols=3,
                      suptitle=f"LayerNorm({cfg.d}) → Linear({cfg.d_out}) block")
    return finish(rundir, runs, rows, text, [fig])
