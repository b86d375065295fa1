"""The equivariance protocol of ddc.md §3 as a per-step plot (the paper's Fig. 28), for every gauge construction.

For each construction of :mod:`gaugemath.verify` (a small model and its binding) and a random group
element ``g`` of its gauges (scales ``α ∈ [e^-1.5, e^1.5]``, translations, rotations): run A trains from
``θ`` on the model's own loss gradients ``g_A``; run B starts at ``g·θ`` and receives
``g_B = D(g)^{-T} g_A``. Logged per step ``t = 1..steps``::

    dev_t = ‖θ_B,t − g·θ_A,t‖ / ‖g·θ_A,t‖     (Euclidean norm over all bound parameters)

An exactly equivariant optimizer keeps ``dev_t`` at round-off (the paper's bar: ``< 1e-6`` in fp32 at
every step); AdamW and Muon, which normalise per coordinate / per matrix in the original coordinates,
do not. Arms: ``ddcadam`` (DDCAdam), ``adamw`` (``torch.optim.AdamW``), ``ddcmuon`` (DDCMuon),
``muon`` (``torch.optim.Muon`` on the matrices + AdamW on the rest); each seed draws its own ``θ``,
``g`` and data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaugemath.verify import THRESHOLDS, _constructions, run_protocol

from ._common import OptimizerConfig, RunDir, configured, markdown_table
from ._harness import Arm, Panel, finish, plot_curves, records_of, sweep

#: experiment optimizer name → :func:`gaugemath.verify.run_protocol` optimizer name
PROTOCOL_NAMES = {"adamw": "adamw", "ddcadam": "ddc_adam", "muon": "muon", "ddcmuon": "ddc_muon"}


@dataclass(frozen=True)
class EquivarianceConfig:
    """``steps`` protocol steps per construction (the paper: 50), ``dtype`` of both runs,
    ``constructions`` (names of :func:`gaugemath.verify._constructions`; empty: all), DDC ``vertical`` policy;
    ``optim.lr``/``optim.weight_decay`` are passed to every optimizer (the protocol's 1e-2 and 0.1)."""

    steps: int = 50
    seeds: tuple[int, ...] = (0,)
    optimizers: tuple[str, ...] = ("ddcadam", "adamw", "ddcmuon", "muon")
    dtype: str = "float32"
    constructions: tuple[str, ...] = ()
    vertical: str = "freeze"
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-2, weight_decay=0.1))


SCALES = {
    "cpu": EquivarianceConfig(),
    "paper": EquivarianceConfig(seeds=tuple(range(5))),
}


def configure(scale: str = "cpu", **overrides: Any) -> EquivarianceConfig:
    """The preset for ``scale`` with ``overrides`` (``None`` values ignored)."""
    return configured("equivariance", SCALES, scale, overrides)


def constructions(cfg: EquivarianceConfig) -> list:
    """The constructions of ``cfg`` (all of :mod:`gaugemath.verify`'s when ``cfg.constructions`` is empty)."""
    every = _constructions()
    unknown = set(cfg.constructions) - {c.name for c in every}
    if unknown:
        raise ValueError(f"unknown constructions {sorted(unknown)}: choose from {[c.name for c in every]}")
    return [c for c in every if not cfg.constructions or c.name in cfg.constructions]


def _run_one(cfg: EquivarianceConfig, arm: Arm, seed: int, run: RunDir, bar: Any) -> dict[str, Any]:
    worst: dict[str, float] = {}
    for c in constructions(cfg):
        history: list[float] = []
        worst[c.name] = run_protocol(c, PROTOCOL_NAMES[arm.optimizer], cfg.dtype, cfg.steps, seed=seed,
                                     lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, vertical=cfg.vertical,
                                     history=history)
        for step, dev in enumerate(history, start=1):
            run.log(arm=arm.label, seed=seed, construction=c.name, step=step, deviation=dev)
        bar.update(cfg.steps)
    return {"arm": arm.label, "seed": seed, "max_deviation": worst}


def summarise(cfg: EquivarianceConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per construction: the maximum over steps and seeds of the deviation, per arm, and whether the DDC
    arms pass (``< THRESHOLDS[dtype]``) and the peers fail (``≥``) the bar."""
    tol = THRESHOLDS[cfg.dtype]
    rows = []
    for c in constructions(cfg):
        row: dict[str, Any] = {"construction": c.name}
        for name in cfg.optimizers:
            row[name] = max(r["max_deviation"][c.name] for r in runs if r["arm"] == name)
            row[f"{name}_passes"] = row[name] < tol
        rows.append(row)
    return rows


def table(cfg: EquivarianceConfig, rows: list[dict[str, Any]]) -> str:
    tol = THRESHOLDS[cfg.dtype]
    header = ["construction"] + [f"{n} max dev ({cfg.dtype})" for n in cfg.optimizers]
    return markdown_table(header, [[r["construction"]] + [f"{r[n]:.2e} {'<' if r[n] < tol else '≥'} {tol:g}"
                                                         for n in cfg.optimizers] for r in rows])


def plot(cfg: EquivarianceConfig, records: list[dict[str, Any]], path: Path) -> Path:
    """One log-scaled axis per construction: deviation against step, one line per arm and seed."""
    names = [c.name for c in constructions(cfg)]
    keyed = [{**r, f"dev:{r['construction']}": r["deviation"]} for r in records]
    panels = [Panel(f"dev:{n}", "‖θ_B − g·θ_A‖ / ‖g·θ_A‖", title=n, hline=THRESHOLDS[cfg.dtype]) for n in names]
    return plot_curves(keyed, panels, path, ncols=min(4, len(panels)),
                       suptitle=f"equivariance protocol ({cfg.dtype}, lr {cfg.optim.lr}, weight decay "
                                f"{cfg.optim.weight_decay}); dotted: the 1e-6 bar")


def run(cfg: EquivarianceConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Every arm × seed × construction; writes ``out/{config,metrics,results}.json*`` and ``equivariance.png``."""
    if cfg.dtype not in THRESHOLDS:
        raise ValueError(f"dtype {cfg.dtype!r}: choose from {sorted(THRESHOLDS)}")
    arms = [Arm(n, n) for n in cfg.optimizers]
    rundir, runs = sweep("equivariance", cfg, out, arms, lambda a, s, r, b: _run_one(cfg, a, s, r, b),
                         cfg.steps * len(constructions(cfg)), show_progress)
    rows = summarise(cfg, runs)
    fig = plot(cfg, records_of(rundir), rundir.figure_path("equivariance"))
    return finish(rundir, runs, rows, table(cfg, rows), [fig], threshold=THRESHOLDS[cfg.dtype])
