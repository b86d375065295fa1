"""The sweep, training loop and plots shared by the mechanism experiments (everything but grokking).

An experiment is a list of *arms* (an optimizer setting with a label, e.g. ``"adamw"`` or
``"ddcadam[sgd]"``) run for every seed. :func:`sweep` owns the run directory and the progress bar,
:func:`train` the logged full-batch (or sampled-batch) loop with the gauge observables of
:mod:`gaugemath.observe`, :func:`plot_curves` the per-step figures, :func:`finish` the results.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gaugemath.backends.torch import Binding
from gaugemath.observe import Observer, bound_tensors, flatten

from ._common import COLOURS, OptimizerConfig, RunDir, make_optimizer, progress, pyplot, read_metrics

_EXTRA_COLOURS = {"sgd": "tab:gray", "gd": "tab:gray", "ddcadam[sgd]": "tab:orange", "ddcadam[adam]": "tab:brown",
                  "ddcadam[freeze]": "tab:red"}
_PALETTE = ("tab:cyan", "tab:olive", "tab:pink", "black")


def colour(arm: str) -> str:
    """Plot colour of an arm: the optimizer's colour of :data:`COLOURS`, a fixed one for the extra arms."""
    if arm in _EXTRA_COLOURS:
        return _EXTRA_COLOURS[arm]
    base = arm.split("[")[0]
    return COLOURS.get(base, _PALETTE[sum(map(ord, arm)) % len(_PALETTE)])


@dataclass(frozen=True)
class Arm:
    """One optimizer setting of a comparison: ``label`` in tables and plots, ``optimizer`` (one of
    ``adamw | ddcadam | muon | ddcmuon`` or an experiment-local one such as ``gd``), ``options`` for it."""

    label: str
    optimizer: str
    options: tuple[tuple[str, Any], ...] = ()


def arms_for(optimizers: Sequence[str], gd: bool = False) -> list[Arm]:
    """One arm per optimizer name, plus the plain gradient-descent reference ``gd`` when asked."""
    return [Arm(n, n) for n in optimizers] + ([Arm("gd", "gd")] if gd else [])


def build_optimizer(arm: Arm, model: nn.Module, optim: OptimizerConfig, binding: Binding,
                    gd_lr: float = 0.0) -> Any:
    """The arm's optimizer on ``model``: ``gd`` is ``torch.optim.SGD(lr=gd_lr)`` (no momentum, no weight
    decay: the charge-conserving reference, ``Q_{t+1} − Q_t = O(η²)``), anything else
    :func:`~gaugemath.experiments._common.make_optimizer` with ``arm.options`` for the DDC ones."""
    if arm.optimizer == "gd":
        return torch.optim.SGD(model.parameters(), lr=gd_lr)
    return make_optimizer(arm.optimizer, model, optim, binding=binding, **dict(arm.options))


def sweep(name: str, cfg: Any, out: str | Path, arms: Sequence[Arm], run_one: Callable[..., dict[str, Any]],
          steps_per_run: int, show_progress: bool = True) -> tuple[RunDir, list[dict[str, Any]]]:
    """``run_one(arm, seed, rundir, bar) -> summary`` for every seed of ``cfg.seeds`` and arm, in that
    order; ``out`` gets ``config.json`` now and ``metrics.jsonl`` as the runs log."""
    rundir = RunDir(out, name, {"config": asdict(cfg), "arms": [asdict(a) for a in arms]})
    bar = progress(len(arms) * len(cfg.seeds) * steps_per_run, name, show_progress)
    runs = []
    for seed in cfg.seeds:
        for arm in arms:
            bar.set_postfix_str(f"{arm.label} seed {seed}")
            runs.append(run_one(arm, seed, rundir, bar))
    bar.close()
    return rundir, runs


def finish(rundir: RunDir, runs: list[dict[str, Any]], rows: list[dict[str, Any]], table: str,
           figures: Sequence[Path], **extra: Any) -> dict[str, Any]:
    """Write ``results.json`` and return the results (``runs``, ``summary``, ``table``, ``figures``, ``dir``)."""
    results = {"runs": runs, "summary": rows, "table": table, "figures": [str(f) for f in figures], **extra}
    rundir.finish(results)
    return {**results, "dir": str(rundir.path)}


def gauge_coordinates(binding: Binding, theta: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per scale family, the position along the orbit ``φ_k = −log h_k(θ)`` (``(units,)``): the log of the
    frame element that takes unit ``k`` to its canonical slice (``h(g·θ) = h(θ)g⁻¹``, so ``φ(g·θ) = φ(θ) + log g``).
    Unlike the Noether charge, ``φ`` changes only by the vertical part of an update (to first order)."""
    return {f.name: -f.frame(theta).log() for f in binding.families if f.kind == "scale"}


def train(model: nn.Module, opt: Any, loss_fn: Callable[[nn.Module, int], torch.Tensor], *, steps: int,
          log_every: int, evaluate: Callable[[nn.Module], dict[str, float]], binding: Binding | None = None,
          probe: Any = None, tag: dict[str, Any] | None = None, run: RunDir | None = None,
          bar: Any = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``steps`` updates ``θ ← opt(θ, ∇ loss_fn(model, step))``; returns ``(history, observations)``.

    At step 0 and after every ``log_every``-th update (and the last) one record ``{**tag, step,
    **evaluate(model)}`` goes to ``history`` and ``run``; with a ``binding`` (or a ``probe`` batch) it
    also carries the :class:`~gaugemath.observe.Observer` observables of that update, flattened
    (``families/<family>/orbit_drift``, ``…/charge_norm``, ``…/charge_drift`` since step 0,
    ``…/vertical_fraction`` and the total ``vertical_fraction``), the mean absolute change of the orbit
    position since step 0 of each scale family ``…/phi_drift = mean_k |φ_k(θ_t) − φ_k(θ_0)|``
    (:func:`gauge_coordinates`), and their maxima over families ``orbit_drift_max``, ``charge_drift_max``,
    ``phi_drift_max``. ``observations`` are the raw Observer records
    (activation spectra included when ``probe`` is given).
    """
    tag = tag or {}
    if binding is not None and isinstance(getattr(opt, "binding", None), Binding):
        binding = opt.binding  # a DDC optimizer's own binding (its frames): observed in the metric it steps in
    obs = Observer(model, binding, weights=False, probe=probe) if (binding is not None or probe is not None) else None
    history: list[dict[str, Any]] = []
    phi0 = gauge_coordinates(binding, bound_tensors(binding)) if binding is not None else {}

    def log(step: int, before: list[torch.Tensor] | None) -> None:
        rec = {**tag, "step": step, **evaluate(model)}
        if obs is not None:
            o = obs.record(step, before if before else None)
            flat = flatten({k: v for k, v in o.items() if k in ("families", "vertical_fraction")})
            for name, phi in gauge_coordinates(binding, bound_tensors(binding)).items() if binding is not None else ():
                flat[f"families/{name}/phi_drift"] = float((phi - phi0[name]).abs().mean())
            rec.update(flat)
            for key in ("orbit_drift", "charge_drift", "phi_drift"):
                vals = [v for k, v in flat.items() if k.endswith("/" + key)]
                if vals:
                    rec[f"{key}_max"] = max(vals)
        history.append(rec)
        if run is not None:
            run.log(**rec)

    log(0, None)
    for step in range(steps):
        loss = loss_fn(model, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{tag}: loss is {float(loss)} at step {step}")
        opt.zero_grad()
        loss.backward()
        logging = (step + 1) % log_every == 0 or step + 1 == steps
        before = bound_tensors(binding) if logging else None
        opt.step()
        if logging:
            log(step + 1, before)
        if bar is not None:
            bar.update(1)
    return history, (obs.records if obs is not None else [])


def gauge_summary(arm: Arm, seed: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The end-of-run gauge observables of a :func:`train` history: final train/test loss, charge, orbit and
    orbit-position drift, and the mean and maximum over the logged updates of the vertical fraction."""
    vf = [r["vertical_fraction"] for r in history[1:]]
    last = history[-1]
    return {"arm": arm.label, "seed": seed, "final_train_loss": last["train_loss"],
            "final_test_loss": last["test_loss"], "final_charge_drift": last["charge_drift_max"],
            "final_orbit_drift": last["orbit_drift_max"], "final_phi_drift": last["phi_drift_max"],
            "vertical_fraction_mean": statistics.fmean(vf), "vertical_fraction_max": max(vf)}


def mean_final(runs: list[dict[str, Any]], label: str, key: str) -> float | None:
    """Mean over the seeds of arm ``label`` of ``run[key]`` (``None`` when no run has a finite value)."""
    vals = [r[key] for r in runs if r["arm"] == label and r.get(key) is not None and math.isfinite(r[key])]
    return statistics.fmean(vals) if vals else None


@dataclass(frozen=True)
class Panel:
    """One axis of :func:`plot_curves`: metric ``key`` against step (``log``: log-scaled y)."""

    key: str
    ylabel: str
    log: bool = True
    title: str = ""
    hline: float | None = None


def plot_curves(records: list[dict[str, Any]], panels: Sequence[Panel], path: Path, *, suptitle: str = "",
                group: str = "arm", style: Callable[[dict[str, Any]], str] | None = None,
                ncols: int | None = None) -> Path:
    """One axis per panel, one thin line per ``(group, seed)`` coloured by group; ``style(record)`` may
    return a line style (e.g. dashed for a second condition). Non-positive values are dropped on log axes."""
    plt = pyplot()
    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        series.setdefault((r[group], r.get("seed", 0), style(r) if style else "-"), []).append(r)
    labelled: set[tuple] = set()
    for ax, panel in zip(axes.flat, panels):
        for (name, _seed, ls), rs in series.items():
            vals = [(r["step"], r.get(panel.key)) for r in rs]
            pts = [(t, v) for t, v in vals if v is not None and math.isfinite(v) and (not panel.log or v > 0)]
            if not pts:
                continue
            key = (name, ls)
            label = None if (key in labelled or ax is not axes.flat[0]) else (name if ls == "-" else f"{name} ({ls})")
            if label:
                labelled.add(key)
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=colour(name), ls=ls, lw=1.1, alpha=0.9, label=label)
        if panel.hline is not None:
            ax.axhline(panel.hline, color="grey", lw=0.6, ls=":")
        if panel.log:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=panel.ylabel, title=panel.title or panel.ylabel)
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def records_of(rundir: RunDir) -> list[dict[str, Any]]:
    """The metrics logged so far in ``rundir`` (flushed on every record)."""
    return read_metrics(rundir.path / "metrics.jsonl")
