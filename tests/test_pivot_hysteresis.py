"""Pivot hysteresis of the RoPE plane frame (issue 19): the anchor column of each plane is kept from step to
step while its plane norm² stays within a factor ``PIVOT_HOLD`` (4, i.e. 2 in norm) of the largest.

Judged on a model nobody here wrote (HF Llama, random init) by the hand-written gauge of ``third_party``
(rotate_half planes rotated with plain tensor operations): the run stays equivariant to the protocol's fp64
bar, the planes switch anchors far less often than with a plain argmax, and the hysteresis branch is actually
taken (the held column is not the argmax on some step). The JAX twin is held to the torch trajectory step for
step (a pivot chosen differently would move the canonical coordinates by the angle between two columns).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gaugemath.backends.torch import DDCAdam
from gaugemath.backends.torch import orbits as torch_orbits
from third_party import CASES, bind_case, protocol


def _llama():
    return next(c for c in CASES if c.name == "llama")


def _run(case, steps: int):
    """DDCAdam on the case for ``steps`` steps; the model, the optimizer and per step the held anchor columns."""
    m = case.make()
    opt = DDCAdam(m.parameters(), binding=bind_case(case, m), lr=1e-2)
    held = []
    for t in range(steps):
        args, kwargs = case.batch(100 + t)
        opt.zero_grad()
        case.loss(m, args, kwargs).backward()
        opt.step()
        held.append(torch.cat([v for st in opt.state.values() for k, v in sorted(st.items())
                               if k.startswith("pivot.")]).clone())
    return m, opt, held


def test_hysteresis_keeps_the_run_equivariant_on_llama():
    """ddc.md's protocol bar for fp64 (1e-12) over 20 steps with the hand-written RoPE/gain/unit/shift element."""
    case = _llama()

    def make(m):
        return DDCAdam(m.parameters(), binding=bind_case(case, m), lr=1e-2, weight_decay=0.1)

    assert protocol(case, make, steps=20) < 1e-12


def test_hysteresis_cuts_anchor_switches_and_is_exercised(monkeypatch):
    """With ``PIVOT_HOLD = 1`` the rule is the plain argmax (a held column is kept only while it is the largest);
    with the default the anchors switch at least 5× less often over 40 steps (measured: 152 → 11 switches of the
    16 planes), every plane holds a valid column after the first step, and the two runs differ (the held
    column is used where it is not the largest: the branch the equivariance test above covers is taken)."""
    case = _llama()
    switches, final = {}, {}
    for hold in (1.0, torch_orbits.PIVOT_HOLD):
        monkeypatch.setattr(torch_orbits, "PIVOT_HOLD", hold)
        m, _, held = _run(case, 40)
        assert held[0].numel() == 16 and all(h.dtype == torch.int64 and bool((h >= 0).all()) for h in held)
        switches[hold] = sum(int((a != b).sum()) for a, b in zip(held, held[1:]))
        final[hold] = [p.detach().clone() for p in m.parameters()]
    assert switches[1.0] >= 5 * max(switches[4.0], 1), switches
    assert any(not torch.equal(a, b) for a, b in zip(final[1.0], final[4.0]))


def test_checkpoint_carries_the_pivots():
    """The held anchors are optimizer state: a resumed run steps bit for bit as the uninterrupted one, and a
    checkpoint whose pivots have another number of planes is refused at load, naming the key."""
    from gaugemath import GaugeError

    case = _llama()
    m, opt, _ = _run(case, 12)
    mc = copy.deepcopy(m)
    oc = DDCAdam(mc.parameters(), binding=bind_case(case, mc), lr=1e-2)
    saved = copy.deepcopy(opt.state_dict())
    oc.load_state_dict(saved)
    args, kwargs = case.batch(999)
    for model, o in ((m, opt), (mc, oc)):
        o.zero_grad()
        case.loss(model, args, kwargs).backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), mc.parameters()))
    st = next(st for st in saved["state"].values() if any(k.startswith("pivot.") for k in st))
    key = next(k for k in st if k.startswith("pivot."))
    st[key] = torch.zeros(st[key].numel() + 1, dtype=torch.int64)
    other = copy.deepcopy(mc)
    with pytest.raises(GaugeError, match=f"state '{key}' has shape"):
        DDCAdam(other.parameters(), binding=bind_case(case, other), lr=1e-2).load_state_dict(saved)


def test_jax_holds_the_same_anchors_as_torch():
    """torch DDCAdam and JAX ``ddc_adam`` from identical parameters, fed identical gradients (fp64, 50 steps, a
    LayerNorm/ReLU/RoPE GPT whose anchors switch 73 times without hysteresis): the trajectories agree to
    1e-12 (a plane anchored in another column would differ by the angle between the columns, O(1)), the
    switch counts are equal, and a state made before the pivots were kept (``pivots=()``) steps as a fresh one."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    from gaugemath.backends import jax as gj
    from gaugemath.backends.torch import bind, detect

    import gaugemath.verify as V

    construction = next(c for c in V._constructions() if c.name == "transformer.layernorm_relu")
    torch.manual_seed(0)
    model, _, loss_fn = construction.make()
    model = model.double()
    specs = detect(model)
    params = {n: jax.numpy.asarray(p.detach().numpy()) for n, p in model.named_parameters()}
    opt = DDCAdam(model.parameters(), binding=bind(model, specs, check=False), lr=1e-2, weight_decay=0.1)
    tx = gj.ddc_adam(1e-2, weight_decay=0.1, gauges=gj.bind(params, specs, check=False))
    state, update = tx.init(params), jax.jit(tx.update)
    assert len(state.pivots) > 0 and all(int(p.min()) == -1 for p in state.pivots)
    fresh_update = tx.update(jax.tree_util.tree_map(jax.numpy.ones_like, params), state, params)[0]
    old_update = tx.update(jax.tree_util.tree_map(jax.numpy.ones_like, params), state._replace(pivots=()), params)[0]
    assert all(bool((fresh_update[k] == old_update[k]).all()) for k in params)
    gen, worst, prev_t, prev_j, sw_t, sw_j = torch.Generator().manual_seed(2), 0.0, None, None, 0, 0
    for _ in range(50):
        opt.zero_grad()
        loss_fn(model, gen).backward()
        grads = {n: jax.numpy.asarray(p.grad.numpy()) for n, p in model.named_parameters()}
        opt.step()
        u, state = update(grads, state, params)
        params = optax.apply_updates(params, u)
        piv_t = torch.cat([v for st in opt.state.values() for k, v in st.items() if k.startswith("pivot.")])
        piv_j = torch.cat([torch.from_numpy(np.array(p)).long() for p in state.pivots])
        if prev_t is not None:
            sw_t, sw_j = sw_t + int((piv_t != prev_t).sum()), sw_j + int((piv_j != prev_j).sum())
        prev_t, prev_j = piv_t.clone(), piv_j
        num = sum(float(np.sum((np.asarray(params[n]) - p.detach().numpy()) ** 2)) for n, p in model.named_parameters())
        den = sum(float(np.sum(p.detach().numpy() ** 2)) for _, p in model.named_parameters())
        worst = max(worst, (num / den) ** 0.5)
    assert worst < 1e-12 and sw_t == sw_j > 0, (worst, sw_t, sw_j)
