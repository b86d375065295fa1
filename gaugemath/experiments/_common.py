"""What every experiment shares: optimizers by name, seeding, the run directory, progress, plots.

A run directory holds ``config.json`` (every setting, the package versions, the machine),
``metrics.jsonl`` (one JSON object per logged step and optimizer/seed), ``results.json`` (the
summary the experiment computes) and PNG figures. Nothing is written anywhere else.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gaugemath.backends.torch import DDCAdam, DDCMuon, bind

OPTIMIZERS = ("adamw", "ddcadam", "muon", "ddcmuon", "rvadamw")
SCALES = ("cpu", "paper")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The matrices Muon takes: 2-D weights of ``nn.Linear`` layers other than the output head.

    Embeddings, the head, gains and biases take AdamW (the usual Muon recipe)."""
    head = getattr(model, "head", None)
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m is not head]


@dataclass(frozen=True)
class OptimizerConfig:
    """Hyper-parameters shared by the four optimizers of a comparison.

    ``lr``/``betas``/``weight_decay`` are AdamW's (and DDCAdam's, and the Adam branch of the
    Muon runs); ``muon_lr``/``momentum`` the Muon branch's (on :func:`hidden_matrices`)."""

    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    muon_lr: float = 0.02
    momentum: float = 0.95


class _Chain:
    """Several optimizers stepped together (Muon on the matrices, AdamW on the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


#: frame variants of the DDC optimizers, named ``ddcadam[per_family]`` (default frames: ``balanced``), and
#: ``ddcadam[lognorm]``: DDCAdam(frame="lognorm") on the gauges it covers (:func:`lognorm_binding`)
VARIANTS = tuple(f"{o}[{f}]" for o in ("ddcadam", "ddcmuon") for f in ("balanced", "per_family")) + \
    ("ddcadam[lognorm]",)


def lognorm_binding(model: nn.Module):
    """The binding ``frame="lognorm"`` can take on ``model``: every detected family but the rotations (the
    Lean model has none) and the norm gains whose consumer a unit rescale also scales (a coordinate two
    scalings touch), both named in ``refusals``; checked on the model like any binding."""
    from gaugemath.backends.torch import detect
    from gaugemath.structure.detect import Refusal

    specs = detect(model)
    units = {v for s in specs if s.family.split(".")[0] in ("relu_rescale", "swiglu_rescale")
             for v in [s.roles.get("W_in", s.roles.get("W_up"))]}
    keep, dropped = [], []
    for s in specs:
        consumers = s.roles.get("W", [])
        consumers = [consumers] if isinstance(consumers, str) else list(consumers)
        if s.family.startswith("head_rotation"):
            dropped.append(Refusal(s.family, s.name, "frame='lognorm' has no rotation gauge"))
        elif s.family.startswith("norm_scale") and set(consumers) & units:
            dropped.append(Refusal(s.family, s.name, "frame='lognorm': its consumer is also scaled by a unit rescale"))
        else:
            keep.append(s)
    binding = bind(model, keep)
    binding.refusals = list(binding.refusals) + dropped
    return binding


def parse_optimizer(name: str) -> tuple[str, str | None]:
    """``"ddcadam[per_family]"`` → ``("ddcadam", "per_family")``; a plain name → ``(name, None)``."""
    base, _, rest = name.partition("[")
    if name not in OPTIMIZERS and name not in VARIANTS:
        raise ValueError(f"optimizer {name!r}: choose from {OPTIMIZERS + VARIANTS}")
    return base, (rest.rstrip("]") or None)


def make_optimizer(name: str, model: nn.Module, cfg: OptimizerConfig, binding=None, **ddc: Any):
    """``adamw | ddcadam | muon | ddcmuon | rvadamw`` on ``model`` (``rvadamw``: AdamW inside the Rotational
    Wrapper of seed 004, the rows of :func:`hidden_matrices` as rotational vectors), or a frame variant such as
    ``ddcadam[per_family]`` (:data:`VARIANTS`: the binding's ``frames``); the DDC ones bind ``model``'s
    gauges (``bind(model)`` unless ``binding`` is given with the variant's frames). ``ddc`` goes to
    DDCAdam/DDCMuon."""
    name, frames = parse_optimizer(name)
    if frames == "lognorm":
        return DDCAdam(model.parameters(), binding=lognorm_binding(model), lr=cfg.lr, betas=cfg.betas,
                       weight_decay=cfg.weight_decay, frame="lognorm", **ddc)
    if frames is not None and (binding is None or binding.frames != frames):
        binding = bind(model, frames=frames)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if name == "ddcadam":
        return DDCAdam(model.parameters(), binding=binding if binding is not None else bind(model), lr=cfg.lr,
                       betas=cfg.betas, weight_decay=cfg.weight_decay, **ddc)
    mats = hidden_matrices(model)
    if name == "rvadamw":
        from gaugemath.rotational import RotationalWrapper, rows

        ids = {id(p) for p in mats}
        rest = [p for p in model.parameters() if id(p) not in ids]
        inner = torch.optim.AdamW([{"params": mats}, {"params": rest}], lr=cfg.lr, betas=cfg.betas,
                                  weight_decay=cfg.weight_decay)
        return RotationalWrapper(inner, rows(*mats), inner_kind="adamw")
    if name == "muon":
        ids = {id(p) for p in mats}
        rest = [p for p in model.parameters() if id(p) not in ids]
        return _Chain(torch.optim.Muon(mats, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum),
                      torch.optim.AdamW(rest, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay))
    return DDCMuon(model.parameters(), binding=binding if binding is not None else bind(model), lr=cfg.muon_lr,
                   weight_decay=cfg.weight_decay, momentum=cfg.momentum, adam_lr=cfg.lr, adam_betas=cfg.betas,
                   adam_weight_decay=cfg.weight_decay, muon_params=mats, **ddc)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def machine() -> dict[str, Any]:
    """Where a run ran: host CPU count, torch version and device."""
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor()})",
            "threads": torch.get_num_threads()}


class RunDir:
    """A run directory: ``config.json`` at creation, ``metrics.jsonl`` as it goes, ``results.json`` at the end."""

    def __init__(self, root: str | Path, experiment: str, config: dict[str, Any]):
        self.path = Path(root)
        self.path.mkdir(parents=True, exist_ok=True)
        self.experiment = experiment
        self.started = time.time()
        self._write("config.json", {"experiment": experiment, **config, "machine": machine()})
        self._metrics = (self.path / "metrics.jsonl").open("w")

    def _write(self, name: str, obj: Any) -> Path:
        path = self.path / name
        path.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
        return path

    def log(self, **record: Any) -> None:
        """Append one record (a step of one optimizer/seed) to ``metrics.jsonl``."""
        self._metrics.write(json.dumps(record, default=_jsonable) + "\n")
        self._metrics.flush()

    def finish(self, results: dict[str, Any]) -> Path:
        """Write ``results.json`` (with the wall time) and close the metrics file."""
        self._metrics.close()
        return self._write("results.json", {"experiment": self.experiment, **results,
                                            "wall_s": round(time.time() - self.started, 1)})

    def figure_path(self, name: str) -> Path:
        return self.path / f"{name}.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(total: int, desc: str, enabled: bool = True):
    """A tqdm progress bar over ``total`` steps (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="step", dynamic_ncols=True, leave=False)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLOURS = {"adamw": "tab:blue", "ddcadam": "tab:red", "muon": "tab:green", "ddcmuon": "tab:purple",
           "ddcadam[balanced]": "tab:red", "ddcadam[per_family]": "tab:orange", "ddcmuon[balanced]": "tab:purple",
           "ddcmuon[per_family]": "tab:pink", "ddcadam[lognorm]": "tab:brown"}

#: the loss-spike rule of :func:`count_spikes`: a rise by more than FACTOR within WINDOW steps to above FLOOR
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_FLOOR = 5.0, 10, 0.2


def count_spikes(losses: list[float], factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW,
                 floor: float = SPIKE_FLOOR) -> int:
    """Loss spikes in a per-step loss curve: step ``t`` is *in a spike* when
    ``loss_t > max(floor, factor · min(loss_{t−window} … loss_{t−1}))``; a spike is a maximal run of
    such steps (so one excursion counts once, however long). The early descent from the initial loss
    never counts (the loss falls there)."""
    count, inside = 0, False
    for t in range(1, len(losses)):
        low = min(losses[max(0, t - window) : t])
        now = losses[t] > max(floor, factor * low)
        count += now and not inside
        inside = now
    return count


def grouped(records: Iterable[dict[str, Any]], *keys: str) -> Iterator[tuple[tuple, list[dict[str, Any]]]]:
    """Records grouped by the values of ``keys`` (in first-seen order)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    yield from groups.items()


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (floats to 3 significant figures)."""
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def configured(experiment: str, presets: dict[str, Any], scale: str, overrides: dict[str, Any]) -> Any:
    """``presets[scale]`` with the non-``None`` ``overrides`` applied. An unknown scale is a ``ValueError``,
    an unknown field a ``TypeError`` (as for an unexpected keyword); both name the experiment and the choices."""
    from dataclasses import fields, replace

    if scale not in presets:
        raise ValueError(f"{experiment}: unknown scale {scale!r}; choose from {', '.join(presets)}")
    cfg = presets[scale]
    given = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in fields(cfg)}
    bad = sorted(set(given) - names)
    if bad:
        raise TypeError(f"{experiment}: unknown option(s) {', '.join(bad)}; options: {', '.join(sorted(names))}")
    return replace(cfg, **given)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core: no thread oversubscription


def worker_count(jobs: int, workers: int | None = None) -> int:
    """Processes :func:`parallel_map` uses for ``jobs`` jobs: ``workers`` (default one per CPU), at most ``jobs``."""
    return min(workers or os.cpu_count() or 1, jobs)


def parallel_map(fn, jobs: list[tuple], workers: int | None = None) -> Iterator[Any]:
    """``fn(*job)`` for every job, in ``workers`` processes (default: one per CPU, at most one per
    job), each single-threaded; results are yielded in completion order. ``workers=1`` runs in this
    process (same thread settings as the caller). ``fn`` must be a module-level function."""
    import multiprocessing as mp

    workers = worker_count(len(jobs), workers)
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_star, [(fn, job) for job in jobs])


def _star(item: tuple) -> Any:
    fn, job = item
    return fn(*job)


class QueueBar:
    """``update(n)`` for code running in a worker process: step counts go, every ``every`` steps, through a
    manager queue to the progress bar of the parent (:func:`worker_progress`); ``flush()`` sends the rest."""

    def __init__(self, queue, every: int = 10):
        self.queue, self.every, self.pending = queue, every, 0

    def update(self, n: int = 1) -> None:
        self.pending += n
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.queue.put(self.pending)
            self.pending = 0


@contextmanager
def worker_progress(bar) -> Iterator[QueueBar]:
    """A :class:`QueueBar` to pass to worker processes, whose counts a thread here adds to ``bar`` as they
    arrive: the bar moves per step, not once per finished run."""
    import multiprocessing as mp
    import queue
    import threading

    with mp.get_context("spawn").Manager() as manager:
        q = manager.Queue()
        done = threading.Event()

        def pump() -> None:
            while not done.is_set() or not q.empty():
                try:
                    bar.update(q.get(timeout=0.1))
                except queue.Empty:
                    continue

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            yield QueueBar(q)
        finally:
            done.set()
            thread.join()
