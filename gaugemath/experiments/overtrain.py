"""A small RoPE language model trained far past fit on Python's own documentation (ddc.md §7: the gap).

Corpus: the documentation strings of :mod:`pydoc_data.topics` (ships with CPython; ≈ 465 k characters),
joined in sorted-key order, non-printable / non-ASCII characters mapped to ``?``; character-level
vocabulary. Split: the last ``val_fraction`` of the text is the validation set; the model trains on the
first ``train_chars`` characters only, so it is driven far past fit (``steps · batch · context`` tokens
are many epochs of the training text). Model: :class:`gaugemath.models.GPT` (LayerNorm, ReLU MLP, RoPE,
so every catalogue gauge is bound by ``bind``); random windows of ``context + 1`` characters, next-token
cross-entropy.

Reported per run: train and validation loss on fixed windows (``eval_windows`` each), the
generalisation gap ``val − train`` at the end, the update vertical fraction and orbit drift; with a
``probe`` batch the activation spectra at every ``nn.Linear`` input, from which
:func:`gaugemath.observe.dead_direction_rates` reads a decay rate of ``λ_min`` per layer ("read": R² ≥ 0.8
and rate ≥ 0.1 over the second half of training) — the paper's "rate read in 32/65 cells" at depth 12.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gaugemath.backends.torch import bind
from gaugemath.models import GPT
from gaugemath.observe import dead_direction_rates

from ._common import OptimizerConfig, RunDir, configured, markdown_table, seed_everything
from ._harness import (
    Arm,
    Panel,
    arms_for,
    build_optimizer,
    finish,
    mean_final,
    plot_curves,
    records_of,
    sweep,
    train,
)


@dataclass(frozen=True)
class OvertrainConfig:
    train_chars: int = 8000
    val_fraction: float = 0.1
    context: int = 64
    batch: int = 16
    d_model: int = 48
    depth: int = 2
    n_heads: int = 4
    d_ff: int = 192
    steps: int = 800
    log_every: int = 50
    eval_windows: int = 64
    probe_windows: int = 8
    seeds: tuple[int, ...] = (0,)
    optimizers: tuple[str, ...] = ("adamw", "ddcadam")
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-3, weight_decay=0.1))


SCALES = {
    "cpu": OvertrainConfig(),
    "paper": OvertrainConfig(train_chars=100_000, context=256, batch=64, d_model=384, depth=12, n_heads=6,
                             d_ff=1536, steps=30_000, log_every=500, eval_windows=512, probe_windows=32,
                             seeds=(0, 1, 2), optimizers=("adamw", "ddcadam", "muon", "ddcmuon"),
                             optim=OptimizerConfig(lr=1e-3, weight_decay=0.1)),
}


def configure(scale: str = "cpu", **overrides: Any) -> OvertrainConfig:
    """The preset for ``scale`` with ``overrides`` (``None`` values ignored)."""
    return configured("overtrain", SCALES, scale, overrides)


def corpus() -> str:
    """The text of ``pydoc_data.topics.topics`` (sorted keys, ``"\\n\\n"``-joined), characters outside
    printable ASCII (and newline) replaced by ``?``."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return "".join(c if c == "\n" or 32 <= ord(c) < 127 else "?" for c in text)


def encode(text: str) -> tuple[torch.Tensor, list[str]]:
    """``(ids, vocab)``: ``ids`` ``(len(text),)`` int64 indices into the sorted character set ``vocab``."""
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64), vocab


def split(ids: torch.Tensor, cfg: OvertrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: the first ``train_chars`` ids, and the last ``val_fraction`` of ``ids``
    (deterministic; they never overlap)."""
    n_val = int(len(ids) * cfg.val_fraction)
    if cfg.train_chars + n_val > len(ids) or cfg.train_chars <= cfg.context + 1 or n_val <= cfg.context + 1:
        raise ValueError(f"train_chars={cfg.train_chars}, val_fraction={cfg.val_fraction}: do not fit the "
                         f"{len(ids)}-character corpus with context {cfg.context}")
    return ids[:cfg.train_chars], ids[len(ids) - n_val:]


def windows(ids: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, length)`` random contiguous windows of ``ids``."""
    start = torch.randint(0, len(ids) - length + 1, (n,), generator=gen)
    return torch.stack([ids[s:s + length] for s in start.tolist()])


def _run_one(cfg: OvertrainConfig, data: tuple[torch.Tensor, torch.Tensor, int], arm: Arm, seed: int, run: RunDir,
             bar: Any) -> dict[str, Any]:
    train_ids, val_ids, vocab = data
    fixed = torch.Generator().manual_seed(40_000 + seed)
    ev_tr = windows(train_ids, cfg.eval_windows, cfg.context + 1, fixed)
    ev_va = windows(val_ids, cfg.eval_windows, cfg.context + 1, fixed)
    probe = windows(val_ids, cfg.probe_windows, cfg.context, fixed)
    gen = seed_everything(seed)
    model = GPT(vocab, cfg.d_model, cfg.depth, cfg.n_heads, cfg.d_ff, norm="layernorm", mlp="relu", rope=True)
    binding = bind(model)
    opt = build_optimizer(arm, model, cfg.optim, binding)

    def evaluate(m: GPT) -> dict[str, float]:
        with torch.no_grad():
            tr, va = float(m.loss(ev_tr[:, :-1], ev_tr[:, 1:])), float(m.loss(ev_va[:, :-1], ev_va[:, 1:]))
        return {"train_loss": tr, "val_loss": va, "gap": va - tr}

    def loss_fn(m: GPT, step: int) -> torch.Tensor:
        batch = windows(train_ids, cfg.batch, cfg.context + 1, gen)
        return m.loss(batch[:, :-1], batch[:, 1:])

    history, observations = train(model, opt, loss_fn, steps=cfg.steps, log_every=cfg.log_every, evaluate=evaluate,
                                  binding=binding, probe=probe, tag={"arm": arm.label, "seed": seed}, run=run, bar=bar)
    rates = dead_direction_rates(observations)
    vf = [r["vertical_fraction"] for r in history[1:]]
    last = history[-1]
    return {"arm": arm.label, "seed": seed, "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
            "final_gap": last["gap"], "min_val_loss": min(r["val_loss"] for r in history),
            "vertical_fraction_mean": statistics.fmean(vf), "final_orbit_drift": last["orbit_drift_max"],
            "rates_read": sum(r["read"] for r in rates.values()), "rate_cells": len(rates), "rates": rates}


KEYS = ("final_train_loss", "final_val_loss", "final_gap", "min_val_loss", "vertical_fraction_mean",
        "final_orbit_drift")


def summarise(arms: list[Arm], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: the seed means of :data:`KEYS` and the dead-direction rates read over all seeds' cells."""
    rows = []
    for a in arms:
        rs = [r for r in runs if r["arm"] == a.label]
        rows.append({"arm": a.label, "seeds": len(rs), **{k: mean_final(runs, a.label, k) for k in KEYS},
                     "rates_read": sum(r["rates_read"] for r in rs), "rate_cells": sum(r["rate_cells"] for r in rs)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(["arm", "seeds", "train loss", "val loss", "gap val − train", "best val loss",
                           "update vertical fraction", "orbit drift", "dead-direction rate read"],
                          [[r["arm"], r["seeds"]] + [r[k] for k in KEYS] + [f"{r['rates_read']}/{r['rate_cells']}"]
                           for r in rows])


def run(cfg: OvertrainConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Every arm × seed; writes ``out/{config,metrics,results}.json*`` and ``overtrain.png``."""
    ids, vocab = encode(corpus())
    train_ids, val_ids = split(ids, cfg)
    arms = arms_for(cfg.optimizers)
    rundir, runs = sweep("overtrain", cfg, out, arms,
                         lambda a, s, r, b: _run_one(cfg, (train_ids, val_ids, len(vocab)), a, s, r, b),
                         cfg.steps, show_progress)
    rows = summarise(arms, runs)
    fig = plot_curves(records_of(rundir), [Panel("train_loss", "cross-entropy", title="train (fixed windows)"),
                                           Panel("val_loss", "cross-entropy", title="validation"),
                                           Panel("gap", "val − train", log=False, title="generalisation gap"),
                                           Panel("vertical_fraction", "‖P_V u‖/‖u‖", title="update vertical fraction")],
                      rundir.figure_path("overtrain"), ncols=4,
                      suptitle=f"char-level GPT (depth {cfg.depth}, d {cfg.d_model}) on {cfg.train_chars} chars of "
                               f"pydoc topics, {cfg.steps} steps")
    return finish(rundir, runs, rows, table(rows), [fig], corpus_chars=len(ids), vocab=len(vocab),
                  train_chars=len(train_ids), val_chars=len(val_ids))
