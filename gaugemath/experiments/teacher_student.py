"""Two-layer ReLU teacher–student regression and its per-unit rescale gauge (the paper's Fig. 13).

Teacher ``f*(x) = W*_out relu(W*_in x + b*_in) + b*_out`` (``teacher_hidden`` units, fixed random), student
:class:`gaugemath.models.MLP` with ``student_hidden ≥ teacher_hidden`` units; ``x ~ N(0, I_{d_in})``,
``n_train`` training and ``n_test`` test points, full-batch mean squared error. ``bind(student)`` detects
the ``relu_rescale.balance`` gauge: per hidden unit ``k`` and ``α > 0``::

    (W_in[k, :], b_in[k], W_out[:, k]) ↦ (α W_in[k, :], α b_in[k], W_out[:, k] / α)

leaves ``f`` unchanged, with Noether charge ``Q_k = ‖W_in[k, :]‖² + b_in[k]² − ‖W_out[:, k]‖²`` (``(hidden,)``),
and orbit position ``φ_k = ¼ log((‖W_in[k]‖² + b_in[k]²)/‖W_out[:,k]‖²)`` (minus the log of the balance frame).
Under gradient flow ``Q`` is conserved; plain GD (the ``gd`` reference, no weight decay) changes it by
``η²(‖g_{W_in[k]}‖² + g_{b_in[k]}² − ‖g_{W_out[:,k]}‖²)`` per step (theory.md §2.3); AdamW's per-coordinate
normalisation moves it at first order. DDCAdam's update is horizontal (zero component along the orbit at the
canonical point); its weight decay is applied to the canonical ``θ̃`` and is horizontal too.

Logged per run: train/test loss, the vertical fraction of the update, the orbit drift and the charge drift
``‖Q_t − Q_0‖/‖Q_0‖`` (:mod:`gaugemath.observe`), the orbit-position drift ``mean_k |φ_k,t − φ_k,0|`` and the
per-unit charges ``Q_k``. An equivariant, horizontal update conserves ``φ`` (to first order), not ``Q``:
``Q_k = r_k² (e^{2φ_k} − e^{−2φ_k})`` with ``r_k`` the balanced unit norm, which learning changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaugemath.backends.torch import bind
from gaugemath.models import MLP
from gaugemath.observe import bound_tensors, charges

from ._common import OptimizerConfig, RunDir, configured, markdown_table, pyplot, seed_everything
from ._harness import (
    Arm,
    Panel,
    arms_for,
    build_optimizer,
    colour,
    finish,
    gauge_summary,
    mean_final,
    plot_curves,
    records_of,
    sweep,
    train,
)


@dataclass(frozen=True)
class TeacherStudentConfig:
    d_in: int = 10
    teacher_hidden: int = 4
    student_hidden: int = 32
    n_train: int = 256
    n_test: int = 1024
    noise: float = 0.0
    steps: int = 1000
    log_every: int = 50
    seeds: tuple[int, ...] = (0, 1)
    optimizers: tuple[str, ...] = ("adamw", "ddcadam")
    gd_reference: bool = True
    gd_lr: float = 0.05
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-3, weight_decay=0.01))


SCALES = {
    "cpu": TeacherStudentConfig(),
    "paper": TeacherStudentConfig(d_in=50, teacher_hidden=8, student_hidden=256, n_train=2048, n_test=8192,
                                  steps=20000, log_every=100, seeds=tuple(range(5)),
                                  optimizers=("adamw", "ddcadam", "muon", "ddcmuon")),
}


def configure(scale: str = "cpu", **overrides: Any) -> TeacherStudentConfig:
    """The preset for ``scale`` with ``overrides`` (``None`` values ignored)."""
    return configured("teacher_student", SCALES, scale, overrides)


def dataset(cfg: TeacherStudentConfig, seed: int) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: ``x`` ``(N, d_in)`` standard normal, ``y = f*(x) + noise``
    ``(N, 1)``, the teacher ``f*`` drawn from ``seed`` (PyTorch's default ``nn.Linear`` init, output layer ×3)."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    torch.manual_seed(30_000 + seed)
    teacher = MLP(cfg.d_in, cfg.teacher_hidden, 1)
    with torch.no_grad():
        teacher.fc_out.weight.mul_(3.0)
        x = torch.randn(cfg.n_train + cfg.n_test, cfg.d_in, generator=gen)
        y = teacher(x) + cfg.noise * torch.randn(len(x), 1, generator=gen)
    return x[:cfg.n_train], y[:cfg.n_train], x[cfg.n_train:], y[cfg.n_train:]


def _run_one(cfg: TeacherStudentConfig, arm: Arm, seed: int, run: RunDir, bar: Any) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te = dataset(cfg, seed)
    seed_everything(seed)
    model = MLP(cfg.d_in, cfg.student_hidden, 1)
    binding = bind(model)
    opt = build_optimizer(arm, model, cfg.optim, binding, cfg.gd_lr)

    def evaluate(m: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            q = next(iter(charges(binding, bound_tensors(binding)).values()))
            return {"train_loss": float((m(x_tr) - y_tr).pow(2).mean()),
                    "test_loss": float((m(x_te) - y_te).pow(2).mean()), "charges": q.tolist()}

    history, _ = train(model, opt, lambda m, step: (m(x_tr) - y_tr).pow(2).mean(), steps=cfg.steps,
                       log_every=cfg.log_every, evaluate=evaluate, binding=binding,
                       tag={"arm": arm.label, "seed": seed}, run=run, bar=bar)
    return gauge_summary(arm, seed, history)


KEYS = ("final_train_loss", "final_test_loss", "vertical_fraction_mean", "vertical_fraction_max",
        "final_charge_drift", "final_phi_drift")


def summarise(arms: list[Arm], runs: list[dict[str, Any]], keys: tuple[str, ...] = KEYS) -> list[dict[str, Any]]:
    """Per arm: the seed means of ``keys``."""
    return [{"arm": a.label, "seeds": sum(r["arm"] == a.label for r in runs),
             **{k: mean_final(runs, a.label, k) for k in keys}} for a in arms]


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(["arm", "seeds", "train MSE", "test MSE", "update vertical fraction (mean)",
                           "(max)", "charge drift ‖Q−Q₀‖/‖Q₀‖", "orbit position drift mean abs(φ−φ₀)"],
                          [[r["arm"], r["seeds"]] + [r[k] for k in KEYS] for r in rows])


def plot_charges(cfg: TeacherStudentConfig, records: list[dict[str, Any]], arms: list[Arm], path: Path) -> Path:
    """Per arm (seed ``cfg.seeds[0]``): every unit's charge ``Q_k`` against step."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(arms), figsize=(3.4 * len(arms), 2.9), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        rs = [r for r in records if r["arm"] == arm.label and r["seed"] == cfg.seeds[0]]
        steps = [r["step"] for r in rs]
        for k in range(cfg.student_hidden):
            ax.plot(steps, [r["charges"][k] for r in rs], color=colour(arm.label), lw=0.7, alpha=0.6)
        ax.set(title=f"{arm.label}: Q_k per unit", xlabel="step")
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("‖W_in[k]‖² + b_in[k]² − ‖W_out[:,k]‖²", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run(cfg: TeacherStudentConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Every arm × seed; writes ``out/{config,metrics,results}.json*``, ``teacher_student.png`` and ``charges.png``."""
    arms = arms_for(cfg.optimizers, cfg.gd_reference)
    rundir, runs = sweep("teacher_student", cfg, out, arms, lambda a, s, r, b: _run_one(cfg, a, s, r, b),
                         cfg.steps, show_progress)
    rows = summarise(arms, runs)
    records = records_of(rundir)
    figs = [plot_curves(records, [Panel("train_loss", "train MSE"), Panel("test_loss", "test MSE"),
                                  Panel("vertical_fraction", "‖P_V u‖/‖u‖", title="update vertical fraction"),
                                  Panel("charge_drift_max", "‖Q−Q₀‖/‖Q₀‖", title="charge drift"),
                                  Panel("phi_drift_max", "mean |φ − φ₀|", title="orbit position drift"),
                                  Panel("orbit_drift_max", "‖θ − h(θ)·θ‖/‖θ‖", title="distance from slice")],
                        rundir.figure_path("teacher_student"), ncols=3,
                        suptitle=f"ReLU teacher ({cfg.teacher_hidden} units) → student ({cfg.student_hidden} units)"),
            plot_charges(cfg, records, arms, rundir.figure_path("charges"))]
    return finish(rundir, runs, rows, table(rows), figs)
