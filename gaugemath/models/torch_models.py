"""PyTorch reference models whose parameters carry the catalogue gauges.

Plain, small modules: an MLP, RoPE attention, SwiGLU / ReLU feed-forward layers, a pre-norm
transformer block, a decoder-only GPT and a ViT. Shapes use ``B`` batch, ``T`` sequence,
``H`` heads, ``D`` = ``d_head``, ``d`` = ``d_model``.

The names of submodules and attributes are a **contract** read by the automatic gauge binder
(which maps e.g. ``blocks[i].mlp.up`` / ``blocks[i].mlp.down`` to the ``swiglu_rescale`` gauge);
do not rename them. In particular:

* ``Attention.q/k/v`` stack heads along the *output rows* of their weights: head ``h`` uses
  rows ``h*d_head:(h+1)*d_head``;
* RoPE rotates *interleaved* pairs: plane ``j`` is coordinates ``(2j, 2j+1)`` of a head.

Initialisation: top-level models (:class:`GPT`, :class:`ViT`) apply :func:`_init_weights`
(``N(0, 0.02²)`` weights for ``Linear``/``Embedding``, zero biases, unit norm gains, zero norm
biases). Component modules built on their own keep PyTorch's default initialisation.
Construction takes no seed: call ``torch.manual_seed`` first for reproducibility.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GPT",
    "MLP",
    "Attention",
    "Block",
    "ReluMLP",
    "RotaryEmbedding",
    "SwiGLU",
    "ViT",
    "gpt2_small",
    "gpt_small_cpu",
    "tiny_gpt",
]

NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "relu")


def _init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Small random init for one module (use with ``model.apply``).

    ``Linear``/``Embedding`` weights ``~ N(0, std²)``, biases ``0``; ``LayerNorm``/``RMSNorm``
    gains ``1`` and biases ``0``.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def _make_norm(norm: str, d_model: int) -> nn.Module:
    if norm == "rmsnorm":
        return nn.RMSNorm(d_model)
    if norm == "layernorm":
        return nn.LayerNorm(d_model)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class _SequenceExample:
    """``example_inputs()`` for a layer on ``(B, T, d_model)`` sequences: what
    :func:`~gaugemath.backends.torch.bind` traces and checks the gauges on."""

    def example_inputs(self) -> tuple[Tensor]:
        first = next(m for m in self.modules() if isinstance(m, nn.Linear))  # type: ignore[attr-defined]
        return (torch.randn(2, 5, first.in_features, dtype=first.weight.dtype,
                            generator=torch.Generator().manual_seed(0)),)


class MLP(nn.Module):
    """Two-layer perceptron ``y = W_out relu(W_in x + b_in) + b_out`` (gauge ``relu_rescale``).

    ``x``: ``(..., d_in)`` → ``y``: ``(..., d_out)``; ``fc_in.weight`` is ``(hidden, d_in)``,
    ``fc_out.weight`` is ``(d_out, hidden)``.
    """

    def __init__(self, d_in: int, hidden: int, d_out: int, activation: str = "relu") -> None:
        super().__init__()
        if activation != "relu":
            raise ValueError(f"activation must be 'relu', got {activation!r}")
        self.activation = activation
        self.fc_in = nn.Linear(d_in, hidden, bias=True)
        self.fc_out = nn.Linear(hidden, d_out, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.relu(self.fc_in(x)))

    def example_inputs(self) -> tuple[Tensor]:
        """One small input batch for :func:`~gaugemath.backends.torch.bind` to trace (the output itself
        must stay unchanged: a regression model)."""
        return (torch.randn(3, self.fc_in.in_features, dtype=self.fc_in.weight.dtype,
                            generator=torch.Generator().manual_seed(0)),)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with *interleaved* planes.

    Plane ``j = 0 .. d_head/2 - 1`` is coordinates ``(2j, 2j+1)``; at position ``m`` it is
    rotated by ``θ = m ω_j`` with ``ω_j = base^(-2j/d_head)``::

        x'[2j]   = cos θ · x[2j] − sin θ · x[2j+1]
        x'[2j+1] = sin θ · x[2j] + cos θ · x[2j+1]

    so ``⟨R_m q, R_n k⟩`` depends on ``m − n`` only. No parameters, no buffers.
    """

    def __init__(self, d_head: int, base: float = 10000.0) -> None:
        super().__init__()
        if d_head <= 0 or d_head % 2:
            raise ValueError(f"d_head must be a positive even integer for RoPE, got d_head={d_head}")
        self.d_head = d_head
        self.base = float(base)

    def frequencies(self, device: torch.device | None = None) -> Tensor:
        """``ω_j = base^(-2j/d_head)``, ``j = 0 .. d_head/2 - 1``, float64, shape ``(d_head/2,)``."""
        two_j = torch.arange(0, self.d_head, 2, dtype=torch.float64, device=device)
        return self.base ** (-two_j / self.d_head)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Rotate ``x`` of shape ``(B, H, T, d_head)``; ``positions`` ``(T,)`` defaults to ``0..T-1``."""
        if x.shape[-1] != self.d_head:
            raise ValueError(f"last dimension of x must be d_head={self.d_head}, got {x.shape[-1]}")
        seq = x.shape[-2]
        if positions is None:
            positions = torch.arange(seq, device=x.device)
        angles = positions.to(torch.float64)[:, None] * self.frequencies(x.device)[None, :]  # (T, D/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
        out = torch.stack((cos * even - sin * odd, sin * even + cos * odd), dim=-1)  # (B, H, T, D/2, 2)
        return out.flatten(-2)


class Attention(_SequenceExample, nn.Module):
    """Multi-head softmax attention, causal by default, optionally with RoPE on queries and keys.

    ``x``: ``(B, T, d)``. With ``W_Q, W_K, W_V``: ``(H·D, d)`` and ``W_O``: ``(d, H·D)``, head ``h``
    uses rows ``h·D:(h+1)·D`` of ``W_Q, W_K, W_V`` (and the same columns of ``W_O``)::

        q_h[t] = R_t W_Q[h] x[t],  k_h[t] = R_t W_K[h] x[t],  v_h[t] = W_V[h] x[t]
        a_h[t, s] = softmax_s(⟨q_h[t], k_h[s]⟩ / √D)       (s ≤ t when causal)
        y[t] = W_O concat_h(Σ_s a_h[t, s] v_h[s])          → (B, T, d)

    ``R_t`` is the :class:`RotaryEmbedding` rotation (identity when ``rope=False``).
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int | None = None, rope: bool = True,
                 causal: bool = True) -> None:
        super().__init__()
        if n_heads <= 0:
            raise ValueError(f"n_heads must be positive, got n_heads={n_heads}")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pass d_head explicitly")
            d_head = d_model // n_heads
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_head
        self.rope = bool(rope)
        self.causal = bool(causal)
        self.rotary: RotaryEmbedding | None = RotaryEmbedding(d_head) if rope else None
        inner = n_heads * d_head
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def _heads(self, y: Tensor) -> Tensor:
        """``(B, T, H·D)`` → ``(B, H, T, D)``: head ``h`` is features ``h·D:(h+1)·D``."""
        batch, seq, _ = y.shape
        return y.view(batch, seq, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0 / math.sqrt(self.d_head))
        return self.o(y.transpose(1, 2).reshape(batch, seq, self.n_heads * self.d_head))


class SwiGLU(_SequenceExample, nn.Module):
    """Gated feed-forward ``y = W_down (silu(W_gate x) ⊙ W_up x)`` (gauge ``swiglu_rescale``).

    ``x``: ``(..., d)`` → ``(..., d)``; ``gate.weight``, ``up.weight``: ``(d_ff, d)``,
    ``down.weight``: ``(d, d_ff)``. No biases.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class ReluMLP(_SequenceExample, nn.Module):
    """Feed-forward ``y = W_out relu(W_in x + b_in) + b_out`` (gauge ``relu_rescale``).

    ``x``: ``(..., d)`` → ``(..., d)``; ``fc_in.weight``: ``(d_ff, d)``, ``fc_out.weight``: ``(d, d_ff)``.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=True)
        self.fc_out = nn.Linear(d_ff, d_model, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.relu(self.fc_in(x)))

    def example_inputs(self) -> tuple[Tensor]:
        """One small input batch for :func:`~gaugemath.backends.torch.bind` to trace (the output itself
        must stay unchanged: a regression model)."""
        return (torch.randn(3, self.fc_in.in_features, dtype=self.fc_in.weight.dtype,
                            generator=torch.Generator().manual_seed(0)),)


class Block(_SequenceExample, nn.Module):
    """Pre-norm residual transformer block, ``x``: ``(B, T, d)`` → ``(B, T, d)``::

        h   = x + attn(ln1(x))
        out = h + mlp(ln2(h))

    ``ln1, ln2``: ``nn.RMSNorm(d)`` (``norm="rmsnorm"``, gain ``γ``) or ``nn.LayerNorm(d)``
    (``norm="layernorm"``, gain ``γ`` and bias ``β``); ``mlp``: :class:`SwiGLU` (``"swiglu"``) or
    :class:`ReluMLP` (``"relu"``); ``attn``: :class:`Attention` (``causal`` passed through).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, norm: str = "rmsnorm", mlp: str = "swiglu",
                 rope: bool = True, d_head: int | None = None, causal: bool = True) -> None:
        super().__init__()
        _check_choice("norm", norm, NORMS)
        _check_choice("mlp", mlp, MLPS)
        self.norm_kind = norm
        self.mlp_kind = mlp
        self.ln1 = _make_norm(norm, d_model)
        self.attn = Attention(d_model, n_heads, d_head=d_head, rope=rope, causal=causal)
        self.ln2 = _make_norm(norm, d_model)
        self.mlp: nn.Module = SwiGLU(d_model, d_ff) if mlp == "swiglu" else ReluMLP(d_model, d_ff)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.attn(self.ln1(x))
        return h + self.mlp(self.ln2(h))


class GPT(nn.Module):
    """Decoder-only language model, ``idx``: ``(B, T)`` int64 → logits ``(B, T, vocab)``::

        x_0 = E[idx] (+ P[0..T-1] when rope=False)      E: (vocab, d), P: (max_len, d)
        x_{i+1} = blocks[i](x_i)                          causal Blocks
        logits = W_head ln_f(x_L) + b_head                W_head: (vocab, d), b_head: (vocab,)

    ``tie_embeddings=True`` makes ``head.weight`` *the same tensor* as ``embed.weight``; it exists so
    that tests can check that the gauge binder refuses it (the ``ce_shift`` gauge moves ``W_head``
    but not ``E``).
    """

    def __init__(self, vocab: int, d_model: int, n_layers: int, n_heads: int, d_ff: int, max_len: int | None = None,
                 norm: str = "rmsnorm", mlp: str = "swiglu", rope: bool = True, tie_embeddings: bool = False) -> None:
        super().__init__()
        _check_choice("norm", norm, NORMS)
        _check_choice("mlp", mlp, MLPS)
        if not rope and (max_len is None or max_len <= 0):
            raise ValueError(f"max_len must be a positive integer when rope=False (learned positions), got {max_len!r}")
        self.vocab = vocab
        self.d_model = d_model
        self.max_len = max_len
        self.norm_kind = norm
        self.mlp_kind = mlp
        self.rope = bool(rope)
        self.tie_embeddings = bool(tie_embeddings)
        self.embed = nn.Embedding(vocab, d_model)
        self.pos: nn.Embedding | None = None if rope else nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, norm=norm, mlp=mlp, rope=rope, causal=True) for _ in range(n_layers)
        )
        self.ln_f = _make_norm(norm, d_model)
        self.head = nn.Linear(d_model, vocab, bias=True)
        self.apply(_init_weights)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, idx: Tensor) -> Tensor:
        seq = idx.shape[1]
        x = self.embed(idx)  # (B, T, d)
        if self.pos is not None:
            if seq > self.max_len:
                raise ValueError(f"sequence length {seq} exceeds max_len={self.max_len}")
            x = x + self.pos(torch.arange(seq, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    #: what :func:`~gaugemath.backends.torch.bind` keeps invariant: softmax cross-entropy on the logits
    gauge_loss = "cross_entropy"

    def example_inputs(self) -> tuple[Tensor]:
        """A small token batch for :func:`~gaugemath.backends.torch.bind` to trace."""
        seq = 5 if self.max_len is None else min(5, self.max_len)
        return (torch.randint(0, self.vocab, (2, seq), generator=torch.Generator().manual_seed(0)),)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy; ``idx``, ``targets``: ``(B, T)`` int64 → scalar."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class ViT(nn.Module):
    """Vision transformer, images ``(B, C, S, S)`` → class logits ``(B, classes)``.

    The image is cut into ``N = (S/p)²`` non-overlapping ``p×p`` patches, each flattened in
    ``(channel, row, column)`` order to ``(C·p·p,)``::

        z_0 = [cls ; W_patch patches + b_patch] + pos       (B, N+1, d)
        z_{i+1} = blocks[i](z_i)                            non-causal Blocks, no RoPE
        logits = W_head ln_f(z_L)[:, 0] + b_head            read from the cls token

    ``pos``: ``(1, N+1, d)`` and ``cls``: ``(1, 1, d)`` are learned, initialised ``N(0, 0.02²)``.
    """

    def __init__(self, image_size: int = 32, patch: int = 4, channels: int = 3, *, d_model: int, n_layers: int,
                 n_heads: int, d_ff: int, classes: int, norm: str = "layernorm", mlp: str = "relu") -> None:
        super().__init__()
        if patch <= 0 or image_size % patch:
            raise ValueError(f"image_size={image_size} must be a multiple of patch={patch}")
        _check_choice("norm", norm, NORMS)
        _check_choice("mlp", mlp, MLPS)
        self.image_size = image_size
        self.patch_size = patch
        self.channels = channels
        self.n_patches = (image_size // patch) ** 2
        self.norm_kind = norm
        self.mlp_kind = mlp
        self.patch = nn.Linear(channels * patch * patch, d_model)
        self.pos = nn.Parameter(torch.zeros(1, self.n_patches + 1, d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, norm=norm, mlp=mlp, rope=False, causal=False) for _ in range(n_layers)
        )
        self.ln_f = _make_norm(norm, d_model)
        self.head = nn.Linear(d_model, classes, bias=True)
        self.apply(_init_weights)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.cls, std=0.02)

    def patchify(self, images: Tensor) -> Tensor:
        """``(B, C, S, S)`` → ``(B, N, C·p·p)``, patches in row-major order."""
        batch, channels, height, width = images.shape
        if (channels, height, width) != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"images must be (B, {self.channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(images.shape)}")
        p, g = self.patch_size, self.image_size // self.patch_size
        x = images.reshape(batch, channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, C, p, p)
        return x.reshape(batch, g * g, channels * p * p)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch(self.patchify(images))  # (B, N, d)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), dim=1) + self.pos  # (B, N+1, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)[:, 0])

    #: what :func:`~gaugemath.backends.torch.bind` keeps invariant: softmax cross-entropy on the logits
    gauge_loss = "cross_entropy"

    def example_inputs(self) -> tuple[Tensor]:
        """A small image batch for :func:`~gaugemath.backends.torch.bind` to trace."""
        return (torch.randn(2, self.channels, self.image_size, self.image_size, dtype=self.patch.weight.dtype,
                            generator=torch.Generator().manual_seed(0)),)


def gpt2_small(**overrides: Any) -> GPT:
    """A GPT-2-small-*shaped* model: vocab 50257, d 768, 12 layers, 12 heads, d_ff 3072, LayerNorm, ReLU MLP.

    Differences from GPT-2: RoPE instead of learned positions, ReLU instead of GELU, no biases
    in attention, untied head with a bias. Parameter count (exact):

    * default (untied head): **162,264,145** (≈162M);
    * ``tie_embeddings=True``: **123,666,769** (≈124M, GPT-2 small itself has 124,439,808).

    ``overrides`` replace any :class:`GPT` argument.
    """
    cfg: dict[str, Any] = dict(vocab=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                               norm="layernorm", mlp="relu", rope=True)
    cfg.update(overrides)
    return GPT(**cfg)


def gpt_small_cpu(**overrides: Any) -> GPT:
    """:func:`gpt2_small` scaled for a CPU: vocab 8192, d 256, 6 layers, 8 heads, d_ff 1024.

    LayerNorm, ReLU MLP, RoPE, untied head: exactly **8,935,424** parameters (≈9M) =
    embed 2,097,152 + 6 blocks × 788,736 (attention 262,144, MLP 525,568, norms 1,024)
    + ln_f 512 + head 2,105,344. ``overrides`` replace any :class:`GPT` argument.
    """
    cfg: dict[str, Any] = dict(vocab=8192, d_model=256, n_layers=6, n_heads=8, d_ff=1024,
                               norm="layernorm", mlp="relu", rope=True)
    cfg.update(overrides)
    return GPT(**cfg)


def tiny_gpt(**overrides: Any) -> GPT:
    """Tiny GPT for tests: vocab 11, d 8, 2 layers, 2 heads (d_head 4), d_ff 16, max_len 16.

    Defaults to RMSNorm, SwiGLU and RoPE (``max_len`` is used only with ``rope=False``).
    """
    cfg: dict[str, Any] = dict(vocab=11, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_len=16)
    cfg.update(overrides)
    return GPT(**cfg)
