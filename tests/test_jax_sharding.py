"""``ddc_adam`` under ``jax.sharding``: a mesh of 2 host CPU devices, parameters, gradients and state sharded
FSDP-style along their first axis (``NamedSharding(mesh, P("x"))``), jitted; the parameters after 3 steps equal
the single-device run's.

Each case runs ``tests/jax_sharding_worker.py`` in a subprocess, because the 2 host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``) must be requested before JAX starts. Bound: the ddc.md
protocol's bars (1e-6 in fp32, 1e-12 in fp64). The sharded program differs from the single-device one only in
how XLA groups the reductions over a sharded axis (two partial sums and an all-reduce), a perturbation of the kind
the protocol's run B makes (which re-rounds every entry of the parameters and gradients) and no larger; measured
1.9e-16 / 1.0e-7 (tiny_gpt) and 2.3e-16 / 7.9e-8 (nanoGPT) relative to the largest entry. The step must also
keep the shards: every leaf sharded on the way in is sharded on the way out (no gather onto one device).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

WORKER = os.path.join(os.path.dirname(__file__), "jax_sharding_worker.py")
BAR = {"float32": 1e-6, "float64": 1e-12}


def _run(model: str, dtype: str, tmp_path) -> dict:
    out = tmp_path / "out.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    run = subprocess.run([sys.executable, WORKER, model, dtype, str(out)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.exists(), run.stderr[-3000:]
    return {k: v.item() for k, v in np.load(out).items()}


@pytest.mark.parametrize("model, dtype", [
    ("tiny_gpt", "float64"),
    pytest.param("tiny_gpt", "float32", marks=pytest.mark.slow),
    pytest.param("nanoGPT (flash)", "float64", marks=pytest.mark.slow),
    pytest.param("nanoGPT (flash)", "float32", marks=pytest.mark.slow),
])
def test_sharded_step_equals_the_single_device_step(model, dtype, tmp_path):
    got = _run(model, dtype, tmp_path)
    assert got["sharded_in"] > 0 and got["sharded_out"] >= got["sharded_in"], got
    assert got["rel"] < BAR[dtype], got
