"""The composed transformer block: invariance and canonical point under random group elements."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gaugemath
from gaugemath.numeric import GroupSample, NumericGauge


@pytest.fixture(scope="module", params=[("swiglu", "rmsnorm"), ("relu", "layernorm")], ids=lambda p: "+".join(p))
def block(request):
    return NumericGauge(gaugemath.transformer_block(*request.param))


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31))
def test_block_outputs_and_canonical_point_are_invariant(block, seed):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=block.n)
    inputs = block.complete_inputs({k: rng.normal(size=s) for k, s in block.input_shapes.items()})
    g = GroupSample(tuple(float(np.exp(rng.normal())) if k == "positive" else float(rng.normal())
                          for k in block.group_kinds))
    moved = block.act_flat(g, theta)
    assert np.max(np.abs(block.outputs(moved, inputs) - block.outputs(theta, inputs))) < 1e-9
    assert np.max(np.abs(block.canonical(moved) - block.canonical(theta))) < 1e-8 * max(1, np.abs(theta).max())


def test_block_orbit_dimension_is_the_sum_of_the_factors(block):
    x = block.generators(np.random.default_rng(0).normal(size=block.n))
    assert np.linalg.matrix_rank(x) == block.k == sum(f.dim for f in block.gauge.factors)
