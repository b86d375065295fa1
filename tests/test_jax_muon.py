"""JAX ``ddc_muon`` on the fp32 protocol of ddc.md §3 (bar 1e-6 at every one of 50 steps)."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("torch")

import gaugemath.verify as V  # noqa: E402

CONSTRUCTIONS = {c.name: c for c in V._constructions()}


def test_jax_ddc_muon_protocol_fp32_50_steps_vit():
    """``gaugemath verify --backend jax --optimizer muon --dtype float32`` on vit.layernorm_relu, a LayerNorm
    stack where Newton–Schulz amplifies the protocol's fp32 rounding (plain Muon with float64 Newton–Schulz:
    1.2e-6 from that rounding alone, ``bench/muon_floor.py``). Measured 3.8e-7 with the balanced frames
    (7.2e-7 with the per-family ones; 1.66e-6 with ``canonical_ns_dtype=jnp.float32``). Bar 1e-6, the paper's.

    transformer.layernorm_relu (3.0e-7 balanced; 1.47e-6 per-family: the ReLU anchor moves ~19x Muon's step
    onto fc_in, whose Newton–Schulz direction carries ~2e-6 relative fp32 error in any Muon) is left to
    ``gaugemath verify --backend jax --optimizer muon`` for time; torch tests it (tests/test_torch_muon.py)."""
    assert V.run_protocol_jax(CONSTRUCTIONS["vit.layernorm_relu"], "ddc_muon", "float32", steps=50) < 1e-6
