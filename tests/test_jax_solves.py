"""The JAX step's solves: conjugate gradients on the coupled Schur complements, and the joint balance's warm start.

Checked against a direct solve written here (``numpy.linalg.solve`` on the formed Gram matrix), and the warm start
against a step from no warm start, as the torch twin's tests do (tests/test_balanced_frame.py).
"""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from gaugemath.backends import jax as gj  # noqa: E402
from gaugemath.backends.jax import projection  # noqa: E402
from gaugemath.backends.torch import detect  # noqa: E402
from torch import nn  # noqa: E402

from gaugemath import GaugeError  # noqa: E402

EPS = float(jnp.finfo(jnp.float64).eps)


def _coupled_gram(seed: int, n_a: int = 24, n_b: int = 60):
    """``Γ = XᵀX`` of a row rescale (``n_b`` units) and a column rescale (``n_a`` units) of one matrix ``W (n_b, n_a)``
    with one more tensor on each side (a bias for the rows, a gain for the columns), written from the definition:
    ``D_A = Σ_b W² + γ²``, ``D_B = Σ_a W² + b²``, ``E = −W²ᵀ`` (exponents of opposite sign)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_b, n_a)) * np.exp(rng.normal(size=(n_b, 1)))
    gain, bias = rng.normal(size=n_a), rng.normal(size=n_b)
    d_a, d_b, e = (w**2).sum(0) + gain**2, (w**2).sum(1) + bias**2, -(w**2).T
    return d_a, d_b, e


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_schur_solve_equals_a_direct_solve_of_the_gram_matrix(seed, monkeypatch):
    """``[[D_A, E], [Eᵀ, D_B]] x = r`` by the projector's CG on the Schur complement equals ``numpy.linalg.solve``
    on the formed matrix. Bound: CG stops at ``16 ε ‖r‖`` in residual (projection.CG_FLOOR); the error in ``x`` is
    at most ``cond(Γ)`` times that, and ``cond(Γ)`` is computed here. The fallback (``S`` formed and factored, taken
    when CG does not reach the floor: forced with ``MAX_CG = 1``) gives the same; one CG iteration alone does not
    reach the floor (so the test would see a CG stopped early)."""
    d_a, d_b, e = _coupled_gram(seed)
    gamma = np.block([[np.diag(d_a), e], [e.T, np.diag(d_b)]])
    rng = np.random.default_rng(seed + 10)
    r_a, r_b = rng.normal(size=(len(d_a), 2)), rng.normal(size=(len(d_b), 2))
    want = np.linalg.solve(gamma, np.concatenate([r_a, r_b]))
    bound = 16 * EPS * np.linalg.cond(gamma) * 10  # (×10: the rounding of the two products per iteration)

    def solve():
        ja, jb, je = jnp.asarray(d_a), jnp.asarray(d_b), jnp.asarray(e)
        x_a = projection.schur_solve(je, ja, jb, jnp.asarray(r_a) - je @ (jnp.asarray(r_b) / jb[:, None]))
        x_b = (jnp.asarray(r_b) - projection._et(je, x_a)) / jb[:, None]
        return np.concatenate([np.asarray(x_a), np.asarray(x_b)])

    rel = lambda x: np.abs(x - want).max() / np.abs(want).max()  # noqa: E731
    assert rel(solve()) <= bound, (rel(solve()), bound)
    ja, jb, je = jnp.asarray(d_a), jnp.asarray(d_b), jnp.asarray(e)
    apply = lambda x: ja[:, None] * x - je @ (projection._et(je, x) / jb[:, None])  # noqa: E731
    r = jnp.asarray(r_a) - je @ (jnp.asarray(r_b) / jb[:, None])
    assert bool(projection._pcg(apply, ja - (je * je) @ (1 / jb), r, EPS)[1])  # CG itself got there (no fallback)
    monkeypatch.setattr(projection, "MAX_CG", 1)
    one, ok = projection._pcg(apply, ja - (je * je) @ (1 / jb), jnp.asarray(r_a), EPS)
    assert not bool(ok)
    assert rel(solve()) <= bound


def _block_params(seed: int = 0):
    """A LayerNorm → Linear → ReLU → Linear classifier (coupled: the gain and the unit rescale share ``W_in``), far
    from balanced, as JAX arrays with the torch detector's specs."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    with torch.no_grad():
        m[0].weight.copy_(torch.exp(torch.randn(6)))
        m[1].weight.mul_(torch.exp(torch.randn(10, 1)))
        m[3].weight.mul_(3.0)
    specs = detect(m, example=(torch.randn(4, 6, dtype=torch.float64),))
    params = {n: jnp.asarray(p.detach().numpy()) for n, p in m.named_parameters()}
    return params, specs


@pytest.fixture(scope="module")
def trained():
    """(shared by the warm-start tests: one binding and one jitted-free run of 4 steps)"""
    return _trained()


def _trained(steps: int = 4):
    params, specs = _block_params()
    tx = gj.ddc_adam(1e-2, weight_decay=0.1, gauges=gj.bind(params, specs, check=False))
    state = tx.init(params)
    rng = np.random.default_rng(3)
    for _ in range(steps):
        g = {n: jnp.asarray(rng.normal(size=p.shape)) for n, p in params.items()}
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    g = {n: jnp.asarray(rng.normal(size=p.shape)) for n, p in params.items()}
    return tx, params, state, g


def test_jax_warm_start_is_only_a_starting_point(trained):
    """Newton starts from last step's log-scales (``DDCAdamState.balance``), but the frame is still the minimiser:
    a step from a corrupted warm start (+0.3, zeros), from none (NaN) or from a state made before the field
    existed (``balance=()``) gives the intact step. Bound (as torch's): Newton stops at the round-off floor, 64 ε
    in log-scale (balance.FLOOR), which the step inherits relative to ``θ``, times cond(Γ) ≤ 1e3."""
    tx, params, state, g = trained
    assert state.balance and all(bool(jnp.all(jnp.isfinite(w))) and float(jnp.abs(w).max()) > 0
                                 for w in state.balance)
    intact = tx.update(g, state, params)[0]
    scale = max(float(jnp.abs(params[n]).max()) for n in params)
    for start in ([w + 0.3 for w in state.balance], [jnp.zeros_like(w) for w in state.balance],
                  [jnp.full_like(w, jnp.nan) for w in state.balance], ()):
        other = tx.update(g, state._replace(balance=tuple(start)), params)[0]
        worst = max(float(jnp.abs(intact[n] - other[n]).max()) for n in params)
        assert worst <= 64 * EPS * 1e3 * scale, worst


def test_jax_warm_start_is_state_and_is_checked(trained):
    """The warm start is carried in the state (a step from a copied state is the same step, bit for bit), and a
    state of another binding (another number of units) is refused naming it."""
    tx, params, state, g = trained
    copied = jax.tree_util.tree_map(jnp.array, state)
    a, b = tx.update(g, state, params)[0], tx.update(g, copied, params)[0]
    assert all(bool(jnp.array_equal(a[n], b[n])) for n in params)
    bad = state._replace(balance=tuple(jnp.zeros(w.shape[0] + 1) for w in state.balance))
    with pytest.raises(GaugeError, match="balance warm start"):
        tx.update(g, bad, params)
