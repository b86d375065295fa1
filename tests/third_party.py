"""Models nobody in this project wrote, and their gauges transformed by hand.

Each case builds a third-party model — ``transformers`` models from small configs with random
init (GPT-2, Llama, Mistral, Qwen2, GPT-NeoX, ViT), ``torch.nn`` modules, nanoGPT's model re-typed
from its public ``model.py`` — with an example
batch, a loss, the families :func:`~gaugemath.backends.torch.bind` must find, and ``transform``: a
group element written out with plain tensor operations on the model's own parameters, from what
each layer computes (Conv1D's ``x @ W + b``, HF's ``rotate_half`` RoPE planes ``(j, j + d/2)``,
grouped-query heads ``h → h // (H / H_kv)``), without any of gaugemath's code. The tests judge the
binder and DDCAdam by these transformations alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import transformers
from torch import nn

transformers.logging.set_verbosity_error()


# ------------------------------------------------------------------------ hand-written group elements
class Draw:
    """Random group elements from one seeded stream (the same stream for every call with one seed)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def scale(self, n: int) -> torch.Tensor:
        return torch.exp(2 * torch.rand(n, generator=self.gen, dtype=torch.float64) - 1)

    def vector(self, n: int) -> torch.Tensor:
        return torch.randn(n, generator=self.gen, dtype=torch.float64)

    def orthogonal(self, n: int) -> torch.Tensor:
        q, r = torch.linalg.qr(torch.randn(n, n, generator=self.gen, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))

    def angle(self) -> float:
        return float(2 * math.pi * torch.rand((), generator=self.gen, dtype=torch.float64))


def gain(norm: nn.Module, a: torch.Tensor, *consumers: torch.Tensor, stored_in_out: bool = False) -> None:
    """``γ ← aγ, β ← aβ`` and each consumer's input column ``i`` divided by ``a_i``."""
    norm.weight.mul_(a)
    if getattr(norm, "bias", None) is not None:
        norm.bias.mul_(a)
    for w in consumers:
        w.div_(a[:, None] if stored_in_out else a[None, :])


def unit(w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor, s: torch.Tensor) -> None:
    """Hidden unit ``k``: producer row ``k`` (and bias) times ``s_k``, consumer column ``k`` over ``s_k``."""
    w_in.mul_(s[:, None])
    if b_in is not None:
        b_in.mul_(s)
    w_out.div_(s[None, :])


def rotate_rows(w: torch.Tensor, rows: list[int], r: torch.Tensor) -> None:
    """Output rows ``rows`` of ``w`` (or entries of a bias) ← ``r`` · those rows."""
    idx = torch.tensor(rows)
    w[idx] = r @ w[idx] if w.dim() == 2 else r @ w[idx]


def rotate_cols(w: torch.Tensor, cols: list[int], r: torch.Tensor) -> None:
    """A ``(in, out)`` weight (Conv1D): output columns ``cols`` ← those columns · ``rᵀ``."""
    idx = torch.tensor(cols)
    w[:, idx] = w[:, idx] @ r.T


def plane(c: float, s: float) -> torch.Tensor:
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def shift(head_weight: torch.Tensor, head_bias: torch.Tensor | None, v: torch.Tensor, c: float) -> None:
    """The logit shift ``W ← W + 1vᵀ``, ``b ← b + c1``."""
    head_weight.add_(v[None, :])
    if head_bias is not None:
        head_bias.add_(c)


# ------------------------------------------------------------------------ cases
@dataclass
class Case:
    """A third-party model: ``make()`` → fp64 model; ``batch(seed)`` → ``(args, kwargs)``;
    ``loss(model, args, kwargs)`` → scalar; ``bind_kwargs`` for :func:`bind`; ``expected``: family
    key → count; ``refused``: substrings that must appear in the refusals; ``transform(model, seed)``
    applies the hand-written group element of the expected families in place."""

    name: str
    make: Callable[[], nn.Module]
    batch: Callable[[int], tuple[tuple, dict]]
    loss: Callable
    transform: Callable[[nn.Module, int], None]
    expected: dict[str, int]
    refused: list[str] = field(default_factory=list)
    bind_kwargs: dict = field(default_factory=dict)
    exact: bool = True  # the ddc.md protocol holds to fp64 round-off (False: an unbound dead direction, see case)


def _tokens(vocab: int, shape=(2, 6)):
    def batch(seed: int):
        ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
        return (), {"input_ids": ids, "labels": ids}

    return batch


def _lm_loss(model, args, kwargs):
    """Next-token cross-entropy in the model's dtype (HF's own loss upcasts the logits to fp32, whose
    rounding would be the floor of an fp64 protocol)."""
    logits = model(input_ids=kwargs["input_ids"]).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), kwargs["input_ids"][:, 1:].reshape(-1))


def _cls_loss(model, args, kwargs):
    return F.cross_entropy(model(pixel_values=kwargs["pixel_values"]).logits, kwargs["labels"])


# ---- GPT-2 (HF): Conv1D weights (in, out), fused c_attn, LayerNorm, GELU MLP, tied or untied head
def gpt2(tied: bool) -> Case:
    cfg = dict(vocab_size=48, n_embd=24, n_layer=2, n_head=3, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
               attn_pdrop=0.0, tie_word_embeddings=tied)

    def make():
        torch.manual_seed(1)
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).double()

    def transform(m, seed):
        d, heads = cfg["n_embd"], cfg["n_head"]
        dh = d // heads
        draw = Draw(seed)
        with torch.no_grad():
            for blk in m.transformer.h:
                gain(blk.ln_1, draw.scale(d), blk.attn.c_attn.weight, stored_in_out=True)
                gain(blk.ln_2, draw.scale(d), blk.mlp.c_fc.weight, stored_in_out=True)
                for h in range(heads):  # q_h = x W[:, q_h] + b[q_h]: rotate the q and k columns alike
                    r = draw.orthogonal(dh)
                    for base in (0, d):
                        cols = list(range(base + h * dh, base + (h + 1) * dh))
                        rotate_cols(blk.attn.c_attn.weight, cols, r)
                        rotate_rows(blk.attn.c_attn.bias, cols, r)
            if not tied:
                gain(m.transformer.ln_f, draw.scale(d), m.lm_head.weight)
                shift(m.lm_head.weight, None, draw.vector(d), 0.0)

    expected = {"norm_scale.layernorm": 4 + (0 if tied else 1), "head_rotation.norope": 2}
    if not tied:
        expected["ce_shift.W"] = 1
    refused = ["ce_shift refused", "tied to lm_head.weight", "norm_scale refused on transformer.ln_f.weight"] \
        if tied else []
    return Case(f"gpt2 ({'tied' if tied else 'untied'})", make, _tokens(48), _lm_loss, transform, expected, refused)


# ---- Llama / Mistral / Qwen2 (HF): RMSNorm by hand, rotate_half RoPE, grouped-query attention, SwiGLU
def llama_like(kind: str) -> Case:
    heads, kv, d, ff = 4, 2, 32, 40
    config = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
              "qwen2": transformers.Qwen2Config}[kind]
    model = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
             "qwen2": transformers.Qwen2ForCausalLM}[kind]

    def make():
        torch.manual_seed(2)
        cfg = config(vocab_size=48, hidden_size=d, intermediate_size=ff, num_hidden_layers=2,
                     num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32)
        m = model(cfg).double()
        if kind == "qwen2":  # HF initialises the q/k/v biases at zero; make them matter
            with torch.no_grad():
                for layer in m.model.layers:
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                        proj.bias.normal_(0.0, 0.5)
        return m

    def transform(m, seed):
        dh, group = d // heads, heads // kv
        draw = Draw(seed)
        with torch.no_grad():
            for layer in m.model.layers:
                att, mlp = layer.self_attn, layer.mlp
                gain(layer.input_layernorm, draw.scale(d), att.q_proj.weight, att.k_proj.weight, att.v_proj.weight)
                gain(layer.post_attention_layernorm, draw.scale(d), mlp.gate_proj.weight, mlp.up_proj.weight)
                unit(mlp.up_proj.weight, None, mlp.down_proj.weight, draw.scale(ff))
                for j in range(kv):  # HF RoPE rotates dims (p, p + dh/2) of each head
                    for p in range(dh // 2):
                        ang = draw.angle()
                        r = plane(math.cos(ang), math.sin(ang))
                        for proj, hs in ((att.k_proj, [j]), (att.q_proj, range(j * group, (j + 1) * group))):
                            for h in hs:
                                rows = [h * dh + p, h * dh + p + dh // 2]
                                rotate_rows(proj.weight, rows, r)
                                if proj.bias is not None:
                                    rotate_rows(proj.bias, rows, r)
            gain(m.model.norm, draw.scale(d), m.lm_head.weight)
            shift(m.lm_head.weight, None, draw.vector(d), 0.0)

    expected = {"norm_scale.rmsnorm": 5, "head_rotation.rope": 2, "swiglu_rescale.anchor": 2, "ce_shift.W": 1}
    return Case(kind, make, _tokens(48), _lm_loss, transform, expected, ["silu is not positively homogeneous"])


# ---- GPT-NeoX (HF): fused QKV interleaved per head ([q_h | k_h | v_h] rows), rotate_half RoPE, parallel residual
def gpt_neox() -> Case:
    d, heads = 32, 4

    def make():
        torch.manual_seed(7)
        cfg = transformers.GPTNeoXConfig(vocab_size=48, hidden_size=d, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=heads, rotary_pct=1.0, hidden_dropout=0.0,
                                         attention_dropout=0.0, max_position_embeddings=32)
        m = transformers.GPTNeoXForCausalLM(cfg).double()
        with torch.no_grad():
            for layer in m.gpt_neox.layers:
                layer.attention.query_key_value.bias.normal_(0.0, 0.3)
        return m

    def transform(m, seed):
        dh = d // heads
        draw = Draw(seed)
        with torch.no_grad():
            for layer in m.gpt_neox.layers:
                qkv = layer.attention.query_key_value
                gain(layer.input_layernorm, draw.scale(d), qkv.weight)
                gain(layer.post_attention_layernorm, draw.scale(d), layer.mlp.dense_h_to_4h.weight)
                for h in range(heads):  # head h owns rows [3·dh·h, 3·dh·(h+1)): q, then k, then v
                    for p in range(dh // 2):
                        ang = draw.angle()
                        r = plane(math.cos(ang), math.sin(ang))
                        for base in (3 * dh * h, 3 * dh * h + dh):
                            rows = [base + p, base + p + dh // 2]
                            rotate_rows(qkv.weight, rows, r)
                            rotate_rows(qkv.bias, rows, r)
            gain(m.gpt_neox.final_layer_norm, draw.scale(d), m.lm_head.weight)
            shift(m.lm_head.weight, None, draw.vector(d), 0.0)

    expected = {"norm_scale.layernorm": 5, "head_rotation.rope": 2, "ce_shift.W": 1}
    return Case("gpt-neox", make, _tokens(48), _lm_loss, transform, expected, ["gelu is not positively homogeneous"])


# ---- ViT (HF): LayerNorm with bias, q/k with bias, GELU MLP, CLS classifier with bias
def vit() -> Case:
    d, heads = 16, 2

    def make():
        torch.manual_seed(3)
        cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=d, num_hidden_layers=2,
                                     num_attention_heads=heads, intermediate_size=24, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        m = transformers.ViTForImageClassification(cfg).double()
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.3)
        return m

    def batch(seed):
        gen = torch.Generator().manual_seed(seed)
        return (), {"pixel_values": torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64),
                    "labels": torch.randint(0, 3, (3,), generator=gen)}

    def transform(m, seed):
        dh = d // heads
        draw = Draw(seed)
        with torch.no_grad():
            for layer in m.vit.layers:
                att = layer.attention
                gain(layer.layernorm_before, draw.scale(d), att.q_proj.weight, att.k_proj.weight, att.v_proj.weight)
                gain(layer.layernorm_after, draw.scale(d), layer.mlp.fc1.weight)
                for h in range(heads):
                    r = draw.orthogonal(dh)
                    rows = list(range(h * dh, (h + 1) * dh))
                    for proj in (att.q_proj, att.k_proj):
                        rotate_rows(proj.weight, rows, r)
                        rotate_rows(proj.bias, rows, r)
            gain(m.vit.layernorm, draw.scale(d), m.classifier.weight)
            shift(m.classifier.weight, m.classifier.bias, draw.vector(d), 0.7)

    expected = {"norm_scale.layernorm": 5, "head_rotation.norope": 2, "ce_shift.W": 1, "ce_shift.b": 1}
    return Case("vit", make, batch, _cls_loss, transform, expected, ["gelu is not positively homogeneous"])


# ---- nanoGPT (Karpathy's model.py, re-typed): fused c_attn nn.Linear, own LayerNorm, tied head
class NanoLayerNorm(nn.Module):
    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, flash: bool, block_size: int):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head, self.n_embd, self.flash = n_head, n_embd, flash
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NanoMLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, n_embd, n_head, bias, flash, block_size):
        super().__init__()
        self.ln_1 = NanoLayerNorm(n_embd, bias)
        self.attn = NanoAttention(n_embd, n_head, bias, flash, block_size)
        self.ln_2 = NanoLayerNorm(n_embd, bias)
        self.mlp = NanoMLP(n_embd, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=True, flash=True):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([NanoBlock(n_embd, n_head, bias, flash, block_size) for _ in range(n_layer)]),
            ln_f=NanoLayerNorm(n_embd, bias)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT does

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                                            ignore_index=-1)
        return logits, loss


def nanogpt(flash: bool) -> Case:
    n_embd, n_head = 16, 2

    def make():
        torch.manual_seed(4)
        m = NanoGPT(n_embd=n_embd, n_head=n_head, flash=flash).double()
        with torch.no_grad():
            for blk in m.transformer.h:
                blk.attn.c_attn.bias.normal_(0.0, 0.3)
        return m

    def batch(seed):
        ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(seed))
        return (ids[:, :-1], ids[:, 1:].contiguous()), {}

    def transform(m, seed):
        dh = n_embd // n_head
        draw = Draw(seed)
        with torch.no_grad():
            for blk in m.transformer.h:
                gain(blk.ln_1, draw.scale(n_embd), blk.attn.c_attn.weight)
                gain(blk.ln_2, draw.scale(n_embd), blk.mlp.c_fc.weight)
                for h in range(n_head):
                    r = draw.orthogonal(dh)
                    for base in (0, n_embd):
                        rows = list(range(base + h * dh, base + (h + 1) * dh))
                        rotate_rows(blk.attn.c_attn.weight, rows, r)
                        rotate_rows(blk.attn.c_attn.bias, rows, r)

    return Case(f"nanoGPT ({'flash' if flash else 'explicit softmax'})", make, batch,
                lambda m, a, k: m(*a, **k)[1], transform,
                {"norm_scale.layernorm": 4, "head_rotation.norope": 2},
                ["norm_scale refused on transformer.ln_f.weight"], {"loss": lambda out: out[1]})


# ---- torch.nn.TransformerEncoderLayer: fused in_proj of nn.MultiheadAttention, ReLU MLP, pre/post norm
def encoder_layer(norm_first: bool, qk_bias: bool = True) -> Case:
    """``qk_bias=False`` drops ``in_proj_bias``: the key bias is a gauge of its own (softmax ignores
    ``q·b_k``, the same for every key) that nothing binds, so its gradient is pure round-off, which
    Adam's ``1/ε`` turns into steps of ``lr·γ/ε`` (measured: 5e-18 → 5e-12, a protocol deviation of
    3e-12 over 8 fp64 steps, for DDCAdam and AdamW alike); without it the protocol is exact."""
    d, heads, ff = 16, 2, 24

    def make():
        torch.manual_seed(5)
        m = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True, norm_first=norm_first).double()
        with torch.no_grad():
            m.self_attn.in_proj_bias.normal_(0.0, 0.3)
            m.linear1.bias.normal_(0.0, 0.3)
        if not qk_bias:
            m.self_attn.register_parameter("in_proj_bias", None)
        return m

    def batch(seed):
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(2, 5, d, generator=gen, dtype=torch.float64),), {}

    target = torch.randn(2, 5, d, generator=torch.Generator().manual_seed(99), dtype=torch.float64)

    def loss(m, args, kwargs):
        return (m(*args) - target).pow(2).mean()

    def transform(m, seed):
        dh = d // heads
        draw = Draw(seed)
        with torch.no_grad():
            if norm_first:
                gain(m.norm1, draw.scale(d), m.self_attn.in_proj_weight)
                gain(m.norm2, draw.scale(d), m.linear1.weight)
            for h in range(heads):
                r = draw.orthogonal(dh)
                for base in (0, d):
                    rows = list(range(base + h * dh, base + (h + 1) * dh))
                    rotate_rows(m.self_attn.in_proj_weight, rows, r)
                    if m.self_attn.in_proj_bias is not None:
                        rotate_rows(m.self_attn.in_proj_bias, rows, r)
            unit(m.linear1.weight, m.linear1.bias, m.linear2.weight, draw.scale(ff))

    if norm_first:
        expected = {"norm_scale.layernorm": 2, "head_rotation.norope": 1, "relu_rescale.anchor": 1}
        refused = []
    else:
        expected = {"head_rotation.norope": 1, "relu_rescale.balance": 1}
        refused = ["norm_scale refused on norm1.weight", "norm_scale refused on norm2.weight"]
    name = f"nn.TransformerEncoderLayer ({'pre' if norm_first else 'post'}-norm{'' if qk_bias else ', no qkv bias'})"
    return Case(name, make, batch, loss, transform, expected, refused, exact=not qk_bias)


# ---- torch.nn.Sequential MLP classifier: the ReLU rescale and the CE shift meet on the output layer
def mlp_classifier() -> Case:
    def make():
        torch.manual_seed(6)
        return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5)).double()

    def batch(seed):
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(8, 6, generator=gen, dtype=torch.float64),), {"_y": torch.randint(0, 5, (8,),
                                                                                             generator=gen)}

    def loss(m, args, kwargs):
        return F.cross_entropy(m(*args), kwargs["_y"])

    def transform(m, seed):
        draw = Draw(seed)
        with torch.no_grad():
            unit(m[0].weight, m[0].bias, m[2].weight, draw.scale(12))
            shift(m[2].weight, m[2].bias, draw.vector(12), -0.3)

    # frames="balanced" centres the output layer's columns before balancing the unit against them, so both
    # bind (per family, the anchor ‖W_out[:, k]‖ = 1 is not shift-invariant: the shift is refused there)
    return Case("nn.Sequential MLP classifier", make, batch, loss, transform,
                {"relu_rescale.anchor": 1, "ce_shift.W": 1, "ce_shift.b": 1}, [], {"loss": "cross_entropy"})


CASES = [gpt2(True), gpt2(False), llama_like("llama"), llama_like("mistral"), llama_like("qwen2"), gpt_neox(), vit(),
         nanogpt(True), nanogpt(False), encoder_layer(True), encoder_layer(False), encoder_layer(True, qk_bias=False),
         encoder_layer(False, qk_bias=False), mlp_classifier()]


def example(case: Case, seed: int = 0) -> tuple[tuple, dict]:
    """The batch as :func:`bind` takes it (keyword-only batches as a dict; private ``_`` keys dropped)."""
    args, kwargs = case.batch(seed)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    return args, kwargs


def bind_case(case: Case, model: nn.Module):
    from gaugemath.backends.torch import bind

    args, kwargs = example(case)
    return bind(model, example=kwargs if not args else args if not kwargs else None, **case.bind_kwargs)


def protocol(case: Case, make_opt, steps: int = 8, seed: int = 11) -> float:
    """ddc.md's protocol with the hand-written ``g``: run A from ``θ``, run B from ``g·θ``, each on the
    gradients of its own loss (an invariant loss gives run B ``D(g)^{-T}`` run A's gradient by itself);
    the max over steps of ``‖θ_B − g·θ_A‖ / ‖g·θ_A‖`` over every parameter."""
    import copy

    a = case.make()
    b = copy.deepcopy(a)
    case.transform(b, seed)
    oa, ob = make_opt(a), make_opt(b)
    worst = 0.0
    for t in range(steps):
        args, kwargs = case.batch(100 + t)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            case.loss(m, args, kwargs).backward()
            o.step()
        image = copy.deepcopy(a)
        case.transform(image, seed)
        pb = {n: p.detach() for n, p in b.named_parameters()}
        pi = {n: p.detach() for n, p in image.named_parameters()}
        num = sum(float((pb[n] - pi[n]).pow(2).sum()) for n in pi)
        den = sum(float(pi[n].pow(2).sum()) for n in pi)
        worst = max(worst, math.sqrt(num / den))
    return worst
