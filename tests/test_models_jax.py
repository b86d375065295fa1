"""JAX reference models against the torch ones: parameter names/shapes, logits and gradients
(float64 to 1e-10/1e-9, float32 to 1e-5), gauge bindings equal to torch ``detect``, a gauge
invariance, import laziness."""

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
jax.config.update("jax_enable_x64", True)  # float64 checks; float32 ones use explicit dtypes

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from gaugemath.backends.torch import detect  # noqa: E402

from gaugemath.models import (  # noqa: E402
    GPT,
    MLP,
    GPTConfig,
    from_torch,
    gpt_apply,
    gpt_config_of,
    gpt_gauge_specs,
    gpt_loss,
    init_gpt,
    jax_models,
    mlp_apply,
    mlp_gauge_specs,
    mlp_init,
    tiny_gpt,
)

COMBOS = list(itertools.product(("rmsnorm", "layernorm"), ("swiglu", "relu"), (True, False)))
IDS = [f"{n}-{m}-{'rope' if r else 'pos'}" for n, m, r in COMBOS]
TINY = dict(vocab=11, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_len=16)


def torch_gpt(norm, mlp, rope, dtype=torch.float64, seed=0, std=0.5):
    """A tiny torch GPT with O(1) weights (so that every parameter visibly matters)."""
    torch.manual_seed(seed)
    model = tiny_gpt(norm=norm, mlp=mlp, rope=rope).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def tokens(batch=3, seq=7, vocab=11, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def jnp_tokens(t):
    return jnp.asarray(t.numpy(), jnp.int32)


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "mlp", "rope"), COMBOS, ids=IDS)
def test_config_roundtrip_and_init_layout(norm, mlp, rope):
    model = tiny_gpt(norm=norm, mlp=mlp, rope=rope)
    cfg = gpt_config_of(model)
    assert cfg == GPTConfig(**TINY, norm=norm, mlp=mlp, rope=rope) and cfg.d_head == 4
    torch_layout = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    for dtype in (jnp.float32, jnp.float64):
        shapes = jax.eval_shape(lambda k, dtype=dtype: init_gpt(k, cfg, dtype), jax.random.key(0))
        assert {n: s.shape for n, s in shapes.items()} == dict(torch_layout)  # same names and shapes
        assert all(s.dtype == dtype for s in shapes.values())


def test_init_values():
    """N(0, 0.02²) weights, zero biases, unit gains (as torch_models._init_weights)."""
    params = init_gpt(jax.random.key(0), GPTConfig(**TINY, norm="layernorm", mlp="relu", rope=False))
    model = tiny_gpt(norm="layernorm", mlp="relu", rope=False)
    assert list(params) == [n for n, _ in model.named_parameters()]  # torch's order too
    for name, p in params.items():
        p = np.asarray(p)
        assert p.dtype == np.float32, name
        if name.endswith("bias"):
            assert np.all(p == 0), name
        elif ".ln" in name or name.startswith("ln_f"):
            assert np.all(p == 1), name
        else:
            assert abs(p.std() - 0.02) < 0.01 and abs(p.mean()) < 0.01, name
    everything = np.concatenate([np.asarray(p).ravel() for n, p in params.items() if n.endswith("weight")
                                 and ".ln" not in n and not n.startswith("ln_f")])
    assert abs(everything.std() - 0.02) < 0.002


def test_cpu_bench_config_and_errors():
    cfg = GPTConfig(vocab=8192, d_model=256, n_layers=6, n_heads=8, d_ff=1024, norm="layernorm", mlp="relu")
    shapes = jax.eval_shape(lambda k: init_gpt(k, cfg), jax.random.key(0))
    assert sum(int(np.prod(s.shape)) for s in shapes.values()) == 8_935_424  # gpt_small_cpu's documented count
    with pytest.raises(ValueError, match="tie_embeddings"):
        gpt_config_of(tiny_gpt(tie_embeddings=True))
    with pytest.raises(ValueError, match="norm"):
        GPTConfig(**TINY, norm="batchnorm")
    with pytest.raises(ValueError, match="mlp"):
        GPTConfig(**TINY, mlp="gelu")
    with pytest.raises(ValueError, match="max_len"):
        GPTConfig(vocab=11, d_model=8, n_layers=1, n_heads=2, d_ff=16, rope=False)
    with pytest.raises(ValueError, match="even"):
        GPTConfig(vocab=11, d_model=6, n_layers=1, n_heads=2, d_ff=16)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab=11, d_model=8, n_layers=1, n_heads=3, d_ff=16)
    cfg = GPTConfig(**TINY, rope=False)
    shapes = jax.eval_shape(lambda k: init_gpt(k, cfg), jax.random.key(0))
    with pytest.raises(ValueError, match="exceeds max_len"):
        jax.eval_shape(lambda p, i: gpt_apply(p, i, cfg), shapes, jax.ShapeDtypeStruct((1, 17), jnp.int32))


# --- forward and backward against torch ------------------------------------------------------------


@pytest.mark.parametrize(("norm", "mlp", "rope"), COMBOS, ids=IDS)
def test_logits_and_grads_match_torch_float64(norm, mlp, rope):
    model = torch_gpt(norm, mlp, rope)
    cfg, params = gpt_config_of(model), from_torch(model)
    assert all(p.dtype == jnp.float64 for p in params.values())
    idx, tgt = tokens(seed=1), tokens(seed=2)
    logits = gpt_apply(params, jnp_tokens(idx), cfg)
    assert logits.dtype == jnp.float64 and logits.shape == (3, 7, 11)
    assert max_err(logits, model(idx).detach().numpy()) < 1e-10
    loss_t = model.loss(idx, tgt)
    loss_t.backward()
    loss_j, grads = jax.value_and_grad(gpt_loss)(params, jnp_tokens(idx), jnp_tokens(tgt), cfg)
    assert abs(float(loss_j) - loss_t.item()) < 1e-10
    for name, p in model.named_parameters():
        assert max_err(grads[name], p.grad.numpy()) < 1e-9, name


@pytest.mark.parametrize(("norm", "mlp", "rope"), COMBOS, ids=IDS)
def test_logits_match_torch_float32(norm, mlp, rope):
    model = torch_gpt(norm, mlp, rope, dtype=torch.float32)
    cfg, params = gpt_config_of(model), from_torch(model)
    assert all(p.dtype == jnp.float32 for p in params.values())
    idx = tokens(seed=3)
    logits = gpt_apply(params, jnp_tokens(idx), cfg)
    assert logits.dtype == jnp.float32
    assert max_err(logits, model(idx).detach().numpy()) < 1e-5


def test_gpt_apply_jits_with_a_static_config():
    model = torch_gpt("layernorm", "relu", True, dtype=torch.float32)
    cfg, params, idx = gpt_config_of(model), from_torch(model), tokens(seed=3)
    logits = jax.jit(gpt_apply, static_argnums=2)(params, jnp_tokens(idx), cfg)
    assert max_err(logits, model(idx).detach().numpy()) < 1e-5


def test_default_init_scale_and_ignore_index_match_torch():
    """The 0.02 init (tiny activations: RMSNorm's eps matters) and F.cross_entropy's ignore_index."""
    torch.manual_seed(0)
    model = tiny_gpt().double()  # RMSNorm, SwiGLU, RoPE, _init_weights
    with torch.no_grad():
        model.embed.weight.mul_(1e-6)  # mean(x²) ~ 1e-16: the eps of the opmath type shows
    cfg, params = gpt_config_of(model), from_torch(model)
    idx, tgt = tokens(seed=4), tokens(seed=5)
    tgt[0, :3] = -100
    assert max_err(gpt_apply(params, jnp_tokens(idx), cfg), model(idx).detach().numpy()) < 1e-12
    assert abs(float(gpt_loss(params, jnp_tokens(idx), jnp_tokens(tgt), cfg)) - model.loss(idx, tgt).item()) < 1e-12


def test_rmsnorm_eps_is_that_of_the_opmath_type():
    """nn.RMSNorm(eps=None): finfo(float32).eps for float32 *and* bfloat16, finfo(float64).eps for float64."""
    for tdt, jdt in ((torch.float32, jnp.float32), (torch.float64, jnp.float64), (torch.bfloat16, jnp.bfloat16)):
        x = torch.full((2, 4), 1e-4, dtype=tdt)
        ref = torch.nn.RMSNorm(4).to(tdt)(x).detach().float().numpy()
        ours = jax_models._rmsnorm(jnp.asarray(x.float().numpy(), jdt), jnp.ones(4, jdt))
        assert ours.dtype == jdt
        assert max_err(ours, ref) <= (1e-2 if tdt == torch.bfloat16 else 1e-6), tdt
    assert abs(float(ours[0, 0]) - 0.2782) < 2e-3  # float32 eps (bfloat16's own eps would give 0.0011)


def test_mlp_matches_torch():
    torch.manual_seed(0)
    model = MLP(8, 16, 8).double()
    params = from_torch(model)
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    y = mlp_apply(params, jnp.asarray(x.numpy()))
    assert max_err(y, model(x).detach().numpy()) < 1e-12
    model(x).square().sum().backward()
    grads = jax.grad(lambda p: jnp.sum(mlp_apply(p, jnp.asarray(x.numpy())) ** 2))(params)
    for name, p in model.named_parameters():
        assert max_err(grads[name], p.grad.numpy()) < 1e-10, name
    model32 = MLP(8, 16, 8)
    y32 = mlp_apply(from_torch(model32), jnp.asarray(x.float().numpy()))
    assert y32.dtype == jnp.float32 and max_err(y32, model32(x.float()).detach().numpy()) < 1e-5

    ours = mlp_init(jax.random.key(0), 5, 9, 3)
    assert [(n, p.shape) for n, p in ours.items()] == [(n, tuple(p.shape)) for n, p in MLP(5, 9, 3).named_parameters()]
    assert all(p.dtype == jnp.float32 for p in ours.values())
    assert float(jnp.max(jnp.abs(ours["fc_in.weight"]))) <= 1 / 5**0.5  # nn.Linear default bound
    assert float(jnp.max(jnp.abs(ours["fc_out.bias"]))) <= 1 / 9**0.5


# --- gauge bindings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "mlp", "rope"), COMBOS, ids=IDS)
def test_gauge_specs_equal_torch_detect(norm, mlp, rope):
    model = tiny_gpt(norm=norm, mlp=mlp, rope=rope)
    specs = gpt_gauge_specs(gpt_config_of(model))
    assert sorted(specs, key=str) == sorted(detect(model), key=str)  # detect: canonicalisation order
    from gaugemath.backends import jax as gj

    shapes = jax.eval_shape(lambda k: init_gpt(k, gpt_config_of(model)), jax.random.key(0))
    binding = gj.bind(shapes, specs, check=False)  # the JAX binder resolves the same names against init_gpt's leaves
    assert len(binding.families) == len(specs) + 1  # ce_shift binds W and b


def test_mlp_gauge_specs_equal_torch_detect():
    assert mlp_gauge_specs() == detect(MLP(5, 9, 3))


def test_swiglu_rescale_leaves_logits_unchanged():
    model = torch_gpt("rmsnorm", "swiglu", True)
    cfg, params = gpt_config_of(model), from_torch(model)
    idx = jnp_tokens(tokens(seed=6))
    ref = gpt_apply(params, idx, cfg)
    moved = dict(params)
    for i, (k, s) in enumerate(((3, 2.5), (11, -0.3))):
        up, down = f"blocks.{i}.mlp.up.weight", f"blocks.{i}.mlp.down.weight"
        moved[up] = moved[up].at[k, :].multiply(s)
        moved[down] = moved[down].at[:, k].divide(s)
    assert max_err(moved[up], params[up]) > 0.1
    assert max_err(gpt_apply(moved, idx, cfg), ref) < 1e-10


# --- packaging ---------------------------------------------------------------------------------------


def test_lazy_imports():
    """``import gaugemath.models`` imports neither backend; jax_models does not import torch."""
    code = ("import sys, gaugemath.models; "
            "assert not {'gaugemath.models.jax_models', 'jax', 'torch'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
    tree = ast.parse(Path(jax_models.__file__).read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
    assert "jax" in modules and not any(m.split(".")[0] == "torch" for m in modules)
    assert init_gpt is jax_models.init_gpt and GPT is not None
