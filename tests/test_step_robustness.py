"""Regression tests for issue 17's defects fixed so far: warmup from lr = 0 (DDCMuon), checkpoints that
resume bit for bit in bf16 and fp64 state, finite gradients whose 2-norm overflows, foreign checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from gaugemath.backends.torch import DDCAdam, DDCMuon, bind

from gaugemath.errors import GaugeError
from gaugemath.models import tiny_gpt


def _loss(model, seed):
    idx = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(seed))
    return model.loss(idx[:, :-1], idx[:, 1:])


def test_ddc_muon_warmup_from_zero_lr():
    torch.manual_seed(0)
    model = tiny_gpt()
    binding = bind(model)
    opt = DDCMuon(model.parameters(), binding=binding, lr=1e-2, adam_lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / 100)  # lr = 0 at the first step
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(3):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
        sched.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(float(opt.state[p]["step"]) == 3 for _, p in binding.params)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize(("cls", "dtype"), [(DDCAdam, torch.bfloat16), (DDCMuon, torch.float32),
                                            (DDCAdam, torch.float32)])
def test_checkpoint_resumes_bit_for_bit(cls, dtype):
    """Run A: 3 steps. Run B: 2 steps, state_dict, a new optimizer on a copy loads it, 1 step: equal to A."""
    torch.manual_seed(0)
    model = tiny_gpt().to(dtype)
    opt = cls(model.parameters(), binding=bind(model), lr=1e-2)
    for step in range(2):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    resumed_model = copy.deepcopy(model)
    resumed = cls(resumed_model.parameters(), binding=bind(resumed_model), lr=1e-2)
    resumed.load_state_dict(saved)
    for k, v in opt.state_dict()["state"].items():  # dtypes kept (torch would cast to the parameter's)
        for key, t in v.items():
            assert resumed.state_dict()["state"][k][key].dtype == t.dtype, key
    for m, o in ((model, opt), (resumed_model, resumed)):
        o.zero_grad()
        _loss(m, 2).backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed_model.parameters()))


def test_finite_gradients_whose_norm_overflows_step_like_adamw():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    ref = torch.nn.Parameter(w.detach().clone())
    ours, theirs = DDCAdam([w], lr=1e-2), torch.optim.AdamW([ref], lr=1e-2)
    g = torch.full((4, 3), 1e19)  # finite; Σg² = 1.2e39 overflows fp32
    w.grad, ref.grad = g.clone(), g.clone()
    ours.step()
    theirs.step()
    assert torch.equal(w, ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_single_non_finite_gradient_entry_is_caught_in_each_dtype(bad):
    """The all-finite check reads each tensor's extremes (``optim.extremes``): one non-finite entry, of either
    sign, anywhere, in fp32, fp64 or bf16, raises naming the parameter, and nothing is changed; 3e38 (finite
    in fp32 and bf16) is not flagged."""
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        model = tiny_gpt().to(dtype)
        opt = DDCAdam(model.named_parameters(), binding=bind(model))
        _loss(model, 0).backward()
        before = [p.detach().clone() for p in model.parameters()]
        model.blocks[0].mlp.down.weight.grad[1, 2] = bad
        with pytest.raises(GaugeError, match="blocks.0.mlp.down.weight.*non-finite gradient"):
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)) and not opt.state
        model.blocks[0].mlp.down.weight.grad[1, 2] = 3e38
        assert opt._all_finite(opt.param_groups[0], [(p, p.grad, {}) for p in model.parameters()])


def test_foreign_and_mismatched_checkpoints_are_named():
    model = tiny_gpt()
    adamw = torch.optim.AdamW(model.parameters())
    _loss(model, 0).backward()
    adamw.step()
    opt = DDCAdam(model.named_parameters(), binding=bind(model))  # named, as torch.optim takes them
    with pytest.raises(GaugeError, match="not saved by DDCAdam: its param groups lack"):
        opt.load_state_dict(adamw.state_dict())
    opt.step()
    other = tiny_gpt(d_model=12)
    with pytest.raises(GaugeError, match="gauge 'checkpoint', block 'embed.weight'.*shape"):
        DDCAdam(other.named_parameters(), binding=bind(other)).load_state_dict(opt.state_dict())


def test_jax_ddc_muon_warmup_from_zero_lr():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from gaugemath.backends import jax as gj

    from gaugemath.models.jax_models import gpt_config_of, gpt_gauge_specs, init_gpt

    model = tiny_gpt()
    cfg = gpt_config_of(model)
    params = init_gpt(jax.random.key(0), cfg)
    binding = gj.bind(params, gpt_gauge_specs(cfg), check=False)  # the twin's specs (tests/test_models_jax.py)
    mats = [n for n, x in params.items() if x.ndim == 2]
    tx = gj.ddc_muon(optax.linear_schedule(0.0, 1e-2, 10), gauges=binding, muon_leaves=mats, adam_lr=1e-3)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(lambda x: jnp.cos(3 * x), params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree_util.tree_leaves(params))


def test_weight_decay_drives_dead_units_to_exact_zero_and_the_run_goes_on():
    """Seed 002's collapse: units that get no gradient are shrunk by the decay each step (×(1 − lr·λ) = ×0.5)
    until fp32 underflows them to exactly zero, where their frame is undefined; the run continues to the end."""
    from gaugemath.models import MLP

    torch.manual_seed(0)
    model = MLP(4, 8, 3)
    with torch.no_grad():
        model.fc_in.bias[:3] = -100.0  # units 0-2: never active, no gradient
    opt = DDCAdam(model.parameters(), binding=bind(model), lr=0.1, weight_decay=5.0)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    for _ in range(300):
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    dead = torch.cat([model.fc_in.weight[:3].flatten(), model.fc_in.bias[:3], model.fc_out.weight[:, :3].flatten()])
    assert float(dead.abs().max()) == 0.0  # reached the symmetric point exactly


def test_protocol_keeps_a_nan_deviation():
    """``verify.run_protocol`` kept ``max(worst, dev)``, which drops a NaN (``max(0.1, nan)`` is 0.1)."""
    import math

    from gaugemath.verify import worse

    assert math.isnan(worse(0.1, float("nan"))) and math.isnan(worse(worse(0.0, float("nan")), 0.2))
    assert worse(0.1, 0.3) == 0.3 and worse(0.3, 0.1) == 0.3


def test_jax_dead_unit_steps_and_a_nan_parameter_is_named_or_skipped():
    """JAX (issue 17 #6): a zero unit is stepped (identity frame, no vertical space) instead of spreading NaN;
    a NaN parameter raises naming the leaf in raise mode and skips the step whole in skip mode."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from gaugemath.backends import jax as gj

    rng = np.random.default_rng(0)
    params = {"fc_in.weight": jnp.asarray(rng.normal(size=(5, 3))), "fc_in.bias": jnp.asarray(rng.normal(size=5)),
              "fc_out.weight": jnp.asarray(rng.normal(size=(2, 5))), "fc_out.bias": jnp.zeros(2)}
    params["fc_in.weight"] = params["fc_in.weight"].at[1].set(0.0)
    params["fc_in.bias"] = params["fc_in.bias"].at[1].set(0.0)
    params["fc_out.weight"] = params["fc_out.weight"].at[:, 1].set(0.0)
    spec = [gj.GaugeSpec("relu_rescale.balance", {"W_in": "fc_in.weight", "b_in": "fc_in.bias",
                                                  "W_out": "fc_out.weight"})]
    binding = gj.bind(params, spec, check=False)
    grads = jax.tree_util.tree_map(lambda x: jnp.cos(x) * (x != 0), params)
    tx = gj.ddc_adam(1e-2, gauges=binding)
    u, _ = tx.update(grads, tx.init(params), params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(u))
    assert float(jnp.abs(u["fc_in.weight"]).max()) > 0 and float(jnp.abs(u["fc_in.weight"][1]).max()) == 0.0
    nan = dict(params, **{"fc_in.weight": params["fc_in.weight"].at[0, 0].set(jnp.nan)})
    with pytest.raises(GaugeError, match="block 'fc_in.weight'.*not finite"):
        gj.ddc_adam(1e-2, gauges=binding, nonfinite="raise").update(grads, tx.init(nan), nan)
    state = tx.init(nan)
    u, after = jax.jit(tx.update)(grads, state, nan)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(u)) and int(after.count) == 0


def test_update_checked_in_the_parameter_dtype():
    """Issue 17 #6: the raise-mode check ran on the fp64 work copy, so a value finite in fp64 but beyond
    fp32's range went into an fp32 parameter as inf with no error. Checked against the parameter dtype."""
    from gaugemath.models import MLP

    torch.manual_seed(0)
    model = MLP(3, 4, 2)
    opt = DDCAdam(model.parameters(), binding=bind(model), lr=1e-2)
    plan = opt._plans[0]
    theta = [p.detach().double().clone() for p in plan["bound"]]
    opt._check_update(theta, plan, [], [], [])  # in range: passes
    theta[0][0, 0] = 1e39  # finite in fp64, inf in fp32
    with pytest.raises(GaugeError, match="block 'fc_in.weight'.*overflows torch.float32"):
        opt._check_update(theta, plan, [], [], [])


def test_rank_deficient_head_is_degenerate_by_an_invariant():
    """A no-RoPE head with d_head > 2·d_model (issue 17 #7's d_head > d_model): [W_Q | W_K] cannot span d_head
    dimensions and pivoted Gram–Schmidt normalises round-off. Decided from ΘΘᵀ's eigenvalues (the same for every
    rotated copy); bind refuses such a family (nothing to condition), explicit specs raise, and an optimizer
    given it anyway steps it with the identity frame and stays finite. A full-rank head is not flagged."""
    from gaugemath.backends.torch import GaugeSpec

    from gaugemath.models import Attention

    torch.manual_seed(0)
    for d_model, d_head, expect in ((2, 8, True), (8, 4, False)):
        model = Attention(d_model, 1, d_head=d_head, rope=False).double()
        spec = [GaugeSpec("head_rotation.norope", {"W_Q": "q.weight", "W_K": "k.weight"}, name="attn",
                          d_head=d_head)]
        binding = bind(model, spec, check=False)
        fam = binding.families[0]
        theta = [p.detach().clone() for _, p in binding.params]
        q, _ = torch.linalg.qr(torch.randn(1, d_head, d_head, dtype=torch.float64))
        rotated = [t.clone() for t in theta]
        fam.act(q, rotated)
        for ts in (theta, rotated):
            assert bool(fam.degenerate(ts, fam.frame(ts))[0]) is expect
        found = bind(model)
        assert any(f.family.gauge == "head_rotation" for f in found.families) is not expect, str(found)
        if expect:
            assert any("degenerate" in r.reason for r in found.refusals), found.refusals
            with pytest.raises(GaugeError, match="not a symmetry of this model: every unit's orbit is degenerate"):
                bind(model, spec)
        opt = DDCAdam(model.parameters(), binding=binding, lr=1e-2)
        x = torch.randn(3, 4, d_model, dtype=torch.float64)
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_jax_messages_name_the_leaf_at_fault():
    """Issue 17: a missing gradient leaf was blamed on a leaf that is present; ``gauges=()`` gave
    "'tuple' object has no attribute 'families'"."""
    import jax.numpy as jnp
    from gaugemath.backends import jax as gj

    params = {"a": jnp.ones(3), "b": jnp.ones(2), "c": jnp.ones(4)}
    tx = gj.ddc_adam(1e-2)
    with pytest.raises(GaugeError, match="block 'b'.*missing from the gradients: \\['b'\\]"):
        tx.update({"a": jnp.ones(3), "c": jnp.ones(4)}, tx.init(params), params)
    with pytest.raises(TypeError, match="pass a JaxBinding"):
        gj.ddc_adam(1e-2, gauges=())


def test_two_live_optimizers_over_one_parameter_are_noticed():
    """Issue 17: two optimizers over the same parameters passed unnoticed (each steps them)."""
    import gc
    import warnings

    model = tiny_gpt(n_layers=1)
    first = DDCAdam(model.parameters(), binding=bind(model))
    with pytest.warns(UserWarning, match="also stepped by another live DDCAdam"):
        DDCAdam(model.parameters())
    del first
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first one is gone: no warning
        DDCAdam(tiny_gpt(n_layers=1).parameters())
