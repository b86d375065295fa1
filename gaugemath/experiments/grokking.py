"""Grokking on modular addition (the paper's testbed, ddc.md §7): ``(a, b) ↦ (a + b) mod p``.

Data: all ``p²`` pairs as 3-token sequences ``[a, b, =]`` (vocabulary ``p + 1``, ``=`` is token ``p``),
the target ``(a + b) mod p`` read at the last position; a seeded split puts ``train_fraction`` of the
pairs in the training set, the rest in the test set. Model: :class:`gaugemath.models.GPT` with
``depth`` blocks (LayerNorm, ReLU MLP, RoPE by default, so every catalogue gauge is bound), trained
full-batch. For each optimizer and seed the model starts from the same initialisation (seeded by the
seed alone) and sees the same split.

Reported per run: train/test loss and accuracy every ``eval_every`` steps, the vertical fraction and
orbit drift of the gauge families (:mod:`gaugemath.observe`), *steps to fit* (first evaluation with
train accuracy ≥ ``threshold``) and *steps to grok* (first with test accuracy ≥ ``threshold``;
``None`` if it never happens within ``steps``).
"""

from __future__ import annotations

import statistics
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gaugemath.backends.torch import bind
from gaugemath.models import GPT
from gaugemath.observe import Observer

from ._common import (
    COLOURS,
    SPIKE_FACTOR,
    SPIKE_FLOOR,
    SPIKE_WINDOW,
    OptimizerConfig,
    RunDir,
    configured,
    count_spikes,
    make_optimizer,
    markdown_table,
    parallel_map,
    progress,
    pyplot,
    read_metrics,
    seed_everything,
    worker_count,
    worker_progress,
)


@dataclass(frozen=True)
class GrokkingConfig:
    modulus: int = 59
    train_fraction: float = 0.35
    depth: int = 1
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    norm: str = "layernorm"
    mlp: str = "relu"
    steps: int = 1200
    eval_every: int = 50
    observe_every: int = 250  # gauge observables every N updates; a multiple of eval_every puts them in the log
    threshold: float = 0.95
    seeds: tuple[int, ...] = (0, 1)
    optimizers: tuple[str, ...] = ("adamw", "ddcadam")
    workers: int | None = None  # processes for the optimizer × seed runs (None: one per CPU)
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-3, weight_decay=1.0))


SCALES = {
    "cpu": GrokkingConfig(),
    "paper": GrokkingConfig(modulus=113, train_fraction=0.3, d_model=128, d_ff=512, steps=20000, eval_every=100,
                            observe_every=1000, seeds=tuple(range(11)),
                            optimizers=("adamw", "ddcadam", "muon", "ddcmuon"),
                            optim=OptimizerConfig(lr=1e-3, weight_decay=1.0)),
}


def dataset(p: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: ``x`` ``(N, 3)`` int64 tokens ``[a, b, p]``, ``y`` ``(N,)``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = (a + b) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(10_000 + seed))
    n_train = int(round(train_fraction * p * p))
    if not 0 < n_train < p * p:
        raise ValueError(f"train_fraction={train_fraction} leaves no train or no test pair for p={p}")
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def _model(cfg: GrokkingConfig, seed: int) -> GPT:
    seed_everything(seed)
    return GPT(cfg.modulus + 1, cfg.d_model, cfg.depth, cfg.n_heads, cfg.d_ff, norm=cfg.norm, mlp=cfg.mlp, rope=True)


def _evaluate(model: GPT, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)[:, -1]
        return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())


def train_one(cfg: GrokkingConfig, optimizer: str, seed: int, bar=None) -> tuple[dict[str, Any], list[dict]]:
    """One optimizer × seed: ``(summary, evaluation records)``."""
    x_tr, y_tr, x_te, y_te = dataset(cfg.modulus, cfg.train_fraction, seed)
    model = _model(cfg, seed)
    binding = bind(model)
    opt = make_optimizer(optimizer, model, cfg.optim, binding=binding)
    obs = Observer(model, getattr(opt, "binding", binding), weights=False, every=cfg.observe_every)  # its own frames
    fit = grok = None
    history, losses = [], []
    for step in range(cfg.steps + 1):
        loss = F.cross_entropy(model(x_tr)[:, -1], y_tr)
        losses.append(float(loss.detach()))  # every step: spikes between evaluations are seen (count_spikes)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"grokking: {optimizer} seed {seed}: loss is {float(loss)} at step {step}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            tr_loss, tr_acc = _evaluate(model, x_tr, y_tr)
            te_loss, te_acc = _evaluate(model, x_te, y_te)
            fit = step if fit is None and tr_acc >= cfg.threshold else fit
            grok = step if grok is None and te_acc >= cfg.threshold else grok
            rec = {"optimizer": optimizer, "seed": seed, "step": step, "train_loss": tr_loss, "train_acc": tr_acc,
                   "test_loss": te_loss, "test_acc": te_acc}
            if obs.records and obs.records[-1]["step"] == step:  # the update that produced θ_step was observed
                last = obs.records[-1]
                rec["vertical_fraction"] = last.get("vertical_fraction")
                rec["orbit_drift_max"] = max(v["orbit_drift"] for v in last["families"].values())
            history.append(rec)
        if step == cfg.steps:
            break
        opt.zero_grad()
        loss.backward()
        with obs.step(step + 1):  # labelled by the step it produces; observed when observe_every divides it
            opt.step()
        if bar is not None:
            bar.update(1)
    if bar is not None and hasattr(bar, "flush"):
        bar.flush()
    obs.close()
    vf = [r["vertical_fraction"] for r in obs.records if "vertical_fraction" in r]
    return {"optimizer": optimizer, "seed": seed, "steps_to_fit": fit, "steps_to_grok": grok,
            "final_train_acc": history[-1]["train_acc"], "final_test_acc": history[-1]["test_acc"],
            "vertical_fraction_mean": statistics.fmean(vf) if vf else None, "spikes": count_spikes(losses),
            "train_loss_per_step": losses}, history


def summarise(cfg: GrokkingConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per optimizer: seeds grokked, median steps to grok (over grokked seeds), mean final accuracies."""
    rows = []
    for name in cfg.optimizers:
        rs = [r for r in runs if r["optimizer"] == name]
        grokked = [r["steps_to_grok"] for r in rs if r["steps_to_grok"] is not None]
        vfs = [r["vertical_fraction_mean"] for r in rs if r["vertical_fraction_mean"] is not None]
        spikes = [r["spikes"] for r in rs]
        rows.append({"optimizer": name, "seeds": len(rs), "grokked": len(grokked),
                     "median_steps_to_grok": statistics.median(grokked) if grokked else None,
                     "mean_steps_to_grok": statistics.fmean(grokked) if grokked else None,
                     "sd_steps_to_grok": statistics.stdev(grokked) if len(grokked) > 1 else None,
                     "spikes_mean": statistics.fmean(spikes) if spikes else None,
                     "spikes_sd": statistics.stdev(spikes) if len(spikes) > 1 else None,
                     "final_test_acc": statistics.fmean(r["final_test_acc"] for r in rs),
                     "final_train_acc": statistics.fmean(r["final_train_acc"] for r in rs),
                     "vertical_fraction": statistics.fmean(vfs) if vfs else None})
    return rows


def _pm(mean: float | None, sd: float | None, digits: int = 0) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["optimizer", "grokked / seeds", "median steps to grok", "steps to grok (mean ± sd)",
         f"loss spikes per run (×{SPIKE_FACTOR:g} in {SPIKE_WINDOW} steps, > {SPIKE_FLOOR:g})", "final test acc",
         "final train acc", "update vertical fraction"],
        [[r["optimizer"], f"{r['grokked']}/{r['seeds']}",
          "—" if r["median_steps_to_grok"] is None else r["median_steps_to_grok"],
          _pm(r.get("mean_steps_to_grok"), r.get("sd_steps_to_grok")), _pm(r.get("spikes_mean"), r.get("spikes_sd"), 1),
          r["final_test_acc"], r["final_train_acc"], "—" if r["vertical_fraction"] is None else r["vertical_fraction"]]
         for r in rows])


def plot(cfg: GrokkingConfig, records: list[dict[str, Any]], path: Path, runs: list[dict[str, Any]] = ()) -> Path:
    """Train (dashed) and test (solid) accuracy and loss against step: a colour per optimizer, a marker and
    shade per seed (both named in the legends); with ``runs``, a third panel: the train loss at every step
    (where the spikes of :func:`~._common.count_spikes` show)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3 if runs else 2, figsize=(16.5 if runs else 11, 4))
    for r in runs:
        k = list(cfg.seeds).index(r["seed"]) if r["seed"] in cfg.seeds else 0
        axes[2].semilogy(r["train_loss_per_step"], lw=0.6, color=COLOURS[r["optimizer"]],
                         alpha=1.0 - 0.5 * k / max(len(cfg.seeds) - 1, 1),
                         label=f"{r['optimizer']} seed {r['seed']}: {r['spikes']} spikes")
    if runs:
        axes[2].set(xlabel="step", ylabel="train cross-entropy", title="train loss at every step")
        axes[2].legend(fontsize=6)
    markers = "os^vD<>p"
    for r_name in cfg.optimizers:
        for k, seed in enumerate(cfg.seeds):
            rs = [r for r in records if r["optimizer"] == r_name and r["seed"] == seed]
            if not rs:
                continue
            steps = [r["step"] for r in rs]
            style = dict(color=COLOURS[r_name], alpha=1.0 - 0.5 * k / max(len(cfg.seeds) - 1, 1),
                         marker=markers[k % len(markers)], markersize=3, markevery=max(len(rs) // 8, 1))
            label = f"{r_name} seed {seed}"
            axes[0].plot(steps, [r["test_acc"] for r in rs], lw=1.2, label=label, **style)
            axes[0].plot(steps, [r["train_acc"] for r in rs], lw=0.8, ls="--", **style)
            axes[1].semilogy(steps, [r["test_loss"] for r in rs], lw=1.2, label=label, **style)
            axes[1].semilogy(steps, [r["train_loss"] for r in rs], lw=0.8, ls="--", **style)
    axes[0].set(xlabel="step", ylabel="accuracy", title=f"(a + b) mod {cfg.modulus}: test (solid), train (dashed)")
    axes[1].set(xlabel="step", ylabel="cross-entropy", title="loss: test (solid), train (dashed)")
    axes[0].axhline(cfg.threshold, color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: GrokkingConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Every optimizer × seed of ``cfg``; writes ``out/{config,metrics,results}.json*`` and ``grokking.png``."""
    rundir = RunDir(out, "grokking", {"config": asdict(cfg)})
    jobs = [(cfg, name, seed) for seed in cfg.seeds for name in cfg.optimizers]
    bar = progress(len(jobs) * cfg.steps, "grokking", show_progress)
    in_process = worker_count(len(jobs), cfg.workers) <= 1
    runs = []
    counting = nullcontext(bar) if in_process else worker_progress(bar) if show_progress else nullcontext(None)
    with counting as step_bar:  # per-step progress, from worker processes too
        for summary, history in parallel_map(train_one, [(*job, step_bar) for job in jobs], cfg.workers):
            runs.append(summary)
            for rec in history:
                rundir.log(**rec)
            bar.set_postfix_str(f"done: {summary['optimizer']} seed {summary['seed']}")
    bar.close()
    order = {(name, seed): k for k, (_, name, seed) in enumerate(jobs)}
    runs.sort(key=lambda r: order[r["optimizer"], r["seed"]])
    rows = summarise(cfg, runs)
    plot(cfg, read_metrics(rundir.path / "metrics.jsonl"), rundir.figure_path("grokking"), runs)
    rundir.finish({"runs": runs, "summary": rows, "table": table(rows)})
    return {"runs": runs, "summary": rows, "table": table(rows), "dir": str(rundir.path)}


def configure(scale: str = "cpu", **overrides: Any) -> GrokkingConfig:
    """The preset for ``scale`` with ``overrides`` (``None`` values ignored)."""
    return configured("grokking", SCALES, scale, overrides)
