"""The optax Rotational Wrapper against the torch one: the same trajectory from the same gradients."""

from __future__ import annotations

import math

import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gaugemath.rotational import RotationalWrapper, rows  # noqa: E402
from gaugemath.rotational_jax import rotational_wrapper  # noqa: E402

EPS = float(jnp.finfo(jnp.float64).eps)


@pytest.mark.parametrize("kind", ["adamw", "sgdm"])
def test_optax_wrapper_follows_the_torch_wrapper(kind):
    """20 steps of the seed's scale-invariant system ``BN(W X)`` in fp64, torch wrapping ``AdamW``/``SGD(momentum)`` and
    optax wrapping ``optax.adamw``/``optax.sgd(momentum)`` (no decay on ``W``, as the torch wrapper switches it off),
    both fed the torch run's gradients: ``W`` agrees to 64 ε per step (each step is a few dozen rounded operations
    per entry on inputs that agree; the RMS normalisation is scale-free and does not amplify)."""
    torch.manual_seed(0)
    c = k = 16
    w = torch.nn.Parameter(torch.randn(k, c, dtype=torch.float64) / math.sqrt(c))
    other = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    lr, wd = (1e-2, 0.5) if kind == "adamw" else (0.1, 5e-3)
    groups = [{"params": [w], "weight_decay": wd}, {"params": [other], "weight_decay": 0.0}]
    inner_t = torch.optim.AdamW(groups, lr=lr) if kind == "adamw" else torch.optim.SGD(groups, lr=lr, momentum=0.9)
    opt = RotationalWrapper(inner_t, rows(w), inner_kind=kind)
    inner_j = optax.adamw(lr, weight_decay=0.0) if kind == "adamw" else optax.sgd(lr, momentum=0.9)
    tx = rotational_wrapper(inner_j, lr, {"w": True, "other": False}, weight_decay=wd, inner_kind=kind)
    params = {"w": jnp.asarray(w.detach().numpy()), "other": jnp.zeros(1)}
    state = tx.init(params)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 21):
        opt.zero_grad()
        x = torch.randn(8, c, generator=gen, dtype=torch.float64)
        y = torch.randn(8, k, generator=gen, dtype=torch.float64)
        h = x @ w.T
        (((h - h.mean(0)) / (h.var(0, unbiased=False) + 1e-5).sqrt() - y).pow(2).mean() + other.sum() ** 2).backward()
        grads = {"w": jnp.asarray(w.grad.numpy()), "other": jnp.asarray(other.grad.numpy())}
        opt.step()
        u, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, u)
        dev = float(np.abs(np.asarray(params["w"]) - w.detach().numpy()).max())
        assert dev <= 64 * EPS * step, (step, dev)
