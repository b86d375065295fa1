"""Seeded optimizer comparisons: ``gaugemath experiment NAME`` and ``gaugemath demo``.

Every experiment module has the same protocol:

* ``SCALES``: ``{"cpu": Config(...), "paper": Config(...)}`` — a CPU-sized default that finishes in
  minutes on 2 cores, and the paper's GPU-scale setting;
* ``configure(scale, **overrides) -> Config`` (``None`` overrides are ignored);
* ``run(cfg, out, show_progress=True) -> dict`` — trains, writes ``out/config.json``,
  ``out/metrics.jsonl``, ``out/results.json`` and PNG plots, and returns the results with a
  Markdown ``"table"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: experiment name → module (imported on first use: each pulls in torch and matplotlib).
EXPERIMENTS = {
    "grokking": "gaugemath.experiments.grokking",
    "overtrain": "gaugemath.experiments.overtrain",
    "teacher_student": "gaugemath.experiments.teacher_student",
    "layernorm_block": "gaugemath.experiments.layernorm_block",
    "zloss": "gaugemath.experiments.zloss",
    "equivariance": "gaugemath.experiments.equivariance",
    "diagonal_linear": "gaugemath.experiments.diagonal_linear",
}


def experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (a ``ValueError`` listing the choices otherwise)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: choose from {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
