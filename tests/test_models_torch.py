"""PyTorch reference models: shapes, RoPE, causality, tying, argument checks, parameter counts,
and the gauges that the naming contract exposes (checked numerically in float64)."""

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from gaugemath.models import (  # noqa: E402
    GPT,
    MLP,
    Attention,
    Block,
    ReluMLP,
    RotaryEmbedding,
    SwiGLU,
    ViT,
    gpt2_small,
    gpt_small_cpu,
    tiny_gpt,
)

GPT_SMALL_CPU_PARAMS = 8_935_424  # documented in gpt_small_cpu's docstring
GPT2_SMALL_PARAMS = 162_264_145  # documented in gpt2_small's docstring (untied)
GPT2_SMALL_TIED_PARAMS = 123_666_769


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def randomize(model, std=0.5):
    """Replace the 0.02 init by O(1) weights so that every parameter visibly affects the output."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def tokens(batch=2, seq=7, vocab=11, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- import laziness -------------------------------------------------------------------------


def test_package_import_is_lazy():
    code = "import sys, gaugemath.models; assert 'gaugemath.models.torch_models' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no_such_model"):
        import gaugemath.models

        gaugemath.models.no_such_model  # noqa: B018


# --- shapes ----------------------------------------------------------------------------------


def test_component_shapes():
    x = torch.randn(3, 5, 8)
    assert MLP(8, 6, 4)(x).shape == (3, 5, 4)
    assert SwiGLU(8, 12)(x).shape == (3, 5, 8)
    assert ReluMLP(8, 12)(x).shape == (3, 5, 8)
    assert RotaryEmbedding(4)(torch.randn(3, 2, 5, 4)).shape == (3, 2, 5, 4)
    for rope in (True, False):
        att = Attention(8, 2, rope=rope)
        assert (att.n_heads, att.d_head, att.rope) == (2, 4, rope)
        assert (att.rotary is not None) == rope
        assert att(x).shape == (3, 5, 8)
        assert att.q.weight.shape == att.k.weight.shape == att.v.weight.shape == (8, 8)
        assert att.q.bias is None and att.o.bias is None
    assert Attention(8, 3, d_head=2)(x).shape == (3, 5, 8)
    for norm in ("rmsnorm", "layernorm"):
        for mlp in ("swiglu", "relu"):
            block = Block(8, 2, 16, norm=norm, mlp=mlp)
            assert block(x).shape == (3, 5, 8)
            assert isinstance(block.mlp, SwiGLU if mlp == "swiglu" else ReluMLP)
            assert isinstance(block.ln1, torch.nn.RMSNorm if norm == "rmsnorm" else torch.nn.LayerNorm)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("mlp", ["swiglu", "relu"])
@pytest.mark.parametrize("rope", [True, False])
def test_gpt_shapes_and_loss(norm, mlp, rope):
    model = tiny_gpt(norm=norm, mlp=mlp, rope=rope)
    idx = tokens()
    assert model(idx).shape == (2, 7, 11)
    assert (model.pos is None) == rope
    loss = model.loss(idx, tokens(seed=1))
    assert loss.shape == () and math.isfinite(loss.item())
    assert abs(loss.item() - math.log(11)) < 0.5  # small init: near-uniform predictions
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_init():
    model = tiny_gpt(norm="layernorm", mlp="relu")
    assert torch.all(model.head.bias == 0) and torch.all(model.blocks[0].mlp.fc_in.bias == 0)
    assert torch.all(model.ln_f.weight == 1) and torch.all(model.blocks[1].ln2.bias == 0)
    big = gpt_small_cpu()
    assert abs(big.embed.weight.std().item() - 0.02) < 1e-3
    assert abs(big.blocks[0].attn.q.weight.std().item() - 0.02) < 1e-3


def test_vit_shapes_and_not_causal():
    model = ViT(image_size=8, patch=4, channels=3, d_model=8, n_layers=2, n_heads=2, d_ff=16, classes=5)
    assert model.patch.in_features == 48 and model.pos.shape == (1, 5, 8) and model.cls.shape == (1, 1, 8)
    assert all(not b.attn.causal and b.attn.rotary is None for b in model.blocks)
    assert isinstance(model.blocks[0].ln1, torch.nn.LayerNorm) and isinstance(model.blocks[0].mlp, ReluMLP)
    randomize(model)
    images = torch.randn(2, 3, 8, 8)
    out = model(images)
    assert out.shape == (2, 5)
    changed = images.clone()
    changed[:, :, 4:, 4:] += 1.0  # the last patch: the cls token (position 0) must still see it
    assert not torch.allclose(model(changed), out)
    assert ViT(d_model=8, n_layers=1, n_heads=2, d_ff=8, classes=3)(torch.randn(1, 3, 32, 32)).shape == (1, 3)


# --- RoPE ------------------------------------------------------------------------------------


def test_rope_interleaved_formula():
    d, base, m = 6, 10000.0, 3
    x = torch.randn(1, 1, 1, d, dtype=torch.float64)
    out = RotaryEmbedding(d, base)(x, torch.tensor([m]))[0, 0, 0]
    x = x[0, 0, 0]
    for j in range(d // 2):
        theta = m * base ** (-2 * j / d)
        c, s = math.cos(theta), math.sin(theta)
        assert abs(out[2 * j] - (c * x[2 * j] - s * x[2 * j + 1])) < 1e-12
        assert abs(out[2 * j + 1] - (s * x[2 * j] + c * x[2 * j + 1])) < 1e-12


def test_rope_default_positions():
    rot = RotaryEmbedding(4)
    x = torch.randn(2, 3, 5, 4)
    assert torch.allclose(rot(x), rot(x, torch.arange(5)))
    assert torch.equal(rot(x)[:, :, 0], x[:, :, 0])  # position 0 is the identity


def test_rope_relative_position():
    rot = RotaryEmbedding(8)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        qm = rot(q.view(1, 1, 1, 8), torch.tensor([m]))
        kn = rot(k.view(1, 1, 1, 8), torch.tensor([n]))
        return (qm * kn).sum().item()

    for m, n, s in [(0, 0, 5), (3, 1, 7), (2, 9, 11), (10, 4, 100)]:
        assert abs(score(m, n) - score(m + s, n + s)) < 1e-5
    assert abs(score(3, 1) - score(3, 2)) > 1e-3  # but it does depend on m - n


# --- causality and tying ---------------------------------------------------------------------


@pytest.mark.parametrize("rope", [True, False])
def test_causal_masking(rope):
    model = randomize(tiny_gpt(rope=rope))
    idx = tokens(batch=1, seq=8)
    t = 5
    changed = idx.clone()
    changed[0, t] = (idx[0, t] + 1) % 11
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-6)


def test_tie_embeddings_shares_tensor():
    untied, tied = tiny_gpt(), tiny_gpt(tie_embeddings=True)
    assert tied.head.weight is tied.embed.weight
    assert tied.head.weight.data_ptr() == tied.embed.weight.data_ptr()
    assert untied.head.weight is not untied.embed.weight
    assert n_params(untied) - n_params(tied) == 11 * 8
    with torch.no_grad():
        tied.embed.weight[0, 0] = 7.0
    assert tied.head.weight[0, 0].item() == 7.0


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: MLP(2, 3, 4, activation="gelu"), "activation"),
        (lambda: RotaryEmbedding(5), "d_head"),
        (lambda: Attention(8, 3), "d_model=8.*n_heads=3"),
        (lambda: Attention(6, 2), "d_head"),  # d_head 3 is odd: RoPE refuses it
        (lambda: Block(8, 2, 16, norm="batchnorm"), "norm.*rmsnorm.*layernorm"),
        (lambda: Block(8, 2, 16, mlp="gelu"), "mlp.*swiglu.*relu"),
        (lambda: GPT(11, 8, 1, 2, 16, norm="batchnorm"), "norm"),
        (lambda: GPT(11, 8, 1, 2, 16, mlp="gelu"), "mlp"),
        (lambda: GPT(11, 8, 1, 2, 16, rope=False), "max_len"),
        (lambda: ViT(image_size=10, patch=4, d_model=8, n_layers=1, n_heads=2, d_ff=8, classes=2), "patch"),
        (lambda: ViT(image_size=8, patch=4, d_model=8, n_layers=1, n_heads=2, d_ff=8, classes=2, mlp="x"), "mlp"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_learned_positions_refuse_long_sequences():
    with pytest.raises(ValueError, match="max_len"):
        tiny_gpt(rope=False)(tokens(batch=1, seq=17))


# --- parameter counts ------------------------------------------------------------------------


def test_gpt_small_cpu_parameter_count():
    model = gpt_small_cpu()
    assert n_params(model) == GPT_SMALL_CPU_PARAMS
    assert model(tokens(batch=1, seq=4, vocab=8192)).shape == (1, 4, 8192)


def test_gpt2_small_parameter_count():
    with torch.device("meta"):  # shapes only: no 650 MB allocation
        assert n_params(gpt2_small()) == GPT2_SMALL_PARAMS
        assert n_params(gpt2_small(tie_embeddings=True)) == GPT2_SMALL_TIED_PARAMS


# --- gauges exposed by the naming contract ---------------------------------------------------


@pytest.fixture
def gauge_model():
    return randomize(tiny_gpt(norm="rmsnorm", mlp="swiglu").double())


def _max_diff(a, b):
    return (a - b).abs().max().item()


@torch.no_grad()
def test_swiglu_rescale_gauge(gauge_model):
    idx = tokens()
    before = gauge_model(idx)
    mlp, k = gauge_model.blocks[0].mlp, 5
    mlp.up.weight[k] *= 3.0
    mlp.down.weight[:, k] /= 3.0
    assert _max_diff(gauge_model(idx), before) < 1e-10
    mlp.down.weight[:, k] *= 3.0  # control: the up-scaling alone is not a gauge
    assert _max_diff(gauge_model(idx), before) > 1e-6


@torch.no_grad()
def test_ce_shift_gauge(gauge_model):
    idx = tokens()
    before = torch.log_softmax(gauge_model(idx), dim=-1)
    v = torch.randn(8, dtype=torch.float64)
    gauge_model.head.weight += v  # W + 1 vᵀ: the same v added to every row
    gauge_model.head.bias += 0.7
    after = gauge_model(idx)
    assert _max_diff(torch.log_softmax(after, dim=-1), before) < 1e-10
    assert _max_diff(after, torch.log_softmax(after, dim=-1)) > 1e-3  # the logits themselves moved


def _rotate_rows(weight, rows, angle):
    c, s = math.cos(angle), math.sin(angle)
    a, b = weight[rows[0]].clone(), weight[rows[1]].clone()
    weight[rows[0]] = c * a - s * b
    weight[rows[1]] = s * a + c * b


@torch.no_grad()
@pytest.mark.parametrize("head, plane", [(0, 0), (1, 1)])
def test_rope_plane_rotation_gauge(gauge_model, head, plane):
    idx = tokens()
    before = gauge_model(idx)
    attn = gauge_model.blocks[0].attn
    assert attn.rope
    rows = (head * attn.d_head + 2 * plane, head * attn.d_head + 2 * plane + 1)
    _rotate_rows(attn.q.weight, rows, 0.9)
    _rotate_rows(attn.k.weight, rows, 0.9)
    assert _max_diff(gauge_model(idx), before) < 1e-10
    _rotate_rows(attn.k.weight, rows, -0.9)  # control: rotating q alone changes the scores
    assert _max_diff(gauge_model(idx), before) > 1e-6
