"""JAX versions of the reference models of :mod:`gaugemath.models.torch_models` (GPT and MLP).

Plain functions over a **flat** parameter dict, no flax/equinox: the keys are exactly the names
that the torch model's ``named_parameters()`` yields (``"embed.weight"``,
``"blocks.0.attn.q.weight"``, ``"blocks.1.mlp.up.weight"``, ``"head.bias"``, ...), with the same
shapes (``nn.Linear`` layout: a weight is ``(out, in)`` and ``y = x @ W.T + b``). Hence

* parameters convert 1:1 between the backends (:func:`from_torch`; the other way round is
  ``model.load_state_dict({k: torch.from_numpy(np.asarray(v)) ...})``);
* one list of :class:`~gaugemath.backends._spec.GaugeSpec` bindings serves both backends:
  :func:`gpt_gauge_specs` / :func:`mlp_gauge_specs` return exactly what
  ``gaugemath.backends.torch.detect`` returns for the corresponding torch model, and
  ``gaugemath.backends.jax.bind(params, specs)`` reads the same leaf names.

flax or equinox would impose their own pytree naming (``params/Dense_0/kernel``, ``(in, out)``
kernels, attribute paths) and break both properties.

The math matches the torch forward passes term for term (tested to 1e-10 in float64):

* pre-norm blocks ``h = x + attn(ln1(x))``, ``out = h + mlp(ln2(h))``;
* ``nn.LayerNorm``: biased variance, ``eps = 1e-5``; ``nn.RMSNorm`` (built with ``eps=None``):
  ``x · rsqrt(mean(x²) + eps) · γ`` with ``eps`` the machine epsilon of the *computation (opmath)
  type*: ``finfo(float32).eps`` for float16/bfloat16/float32, ``finfo(float64).eps`` for float64
  (not ``finfo(x.dtype).eps`` for the half types). Norms of half-precision inputs are computed in
  float32 and cast back, as torch does;
* causal softmax attention with scale ``1/√d_head``; heads are row blocks of ``W_Q, W_K, W_V``;
* RoPE on queries and keys with *interleaved* planes ``(2j, 2j+1)``, ``ω_j = base^(-2j/d_head)``,
  angles computed in float64 (NumPy, at trace time) and cast to the activation dtype;
* SwiGLU ``down(silu(gate x) ⊙ up x)`` or ReLU ``fc_out(relu(fc_in x))``; final norm; head with
  a bias. Learned positions (``pos.weight``) replace RoPE when ``rope=False``.

:class:`GPTConfig` is a frozen (hashable) dataclass, so ``jax.jit(gpt_apply, static_argnums=2)``
works. Tied embeddings are not modelled (the ``ce_shift`` gauge needs an untied head).

>>> import jax, jax.numpy as jnp
>>> cfg = GPTConfig(vocab=11, d_model=8, n_layers=2, n_heads=2, d_ff=16)
>>> params = init_gpt(jax.random.key(0), cfg)
>>> params["blocks.0.attn.q.weight"].shape
(8, 8)
>>> gpt_apply(params, jnp.zeros((2, 5), jnp.int32), cfg).shape
(2, 5, 11)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gaugemath.backends._spec import GaugeSpec

__all__ = [
    "GPTConfig",
    "from_torch",
    "gpt_apply",
    "gpt_config_of",
    "gpt_gauge_specs",
    "gpt_loss",
    "init_gpt",
    "mlp_apply",
    "mlp_gauge_specs",
    "mlp_init",
]

NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "relu")
LAYERNORM_EPS = 1e-5  # nn.LayerNorm default
ROPE_BASE = 10000.0  # RotaryEmbedding default
INIT_STD = 0.02  # torch_models._init_weights

Params = dict[str, jax.Array]


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of :class:`gaugemath.models.torch_models.GPT` (untied head).

    ``max_len`` is needed (and used) only with ``rope=False`` (learned positions).
    """

    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_len: int | None = None
    norm: str = "rmsnorm"
    mlp: str = "swiglu"
    rope: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.n_heads <= 0:
            raise ValueError(f"n_heads must be positive, got n_heads={self.n_heads}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.rope and (self.d_head <= 0 or self.d_head % 2):
            raise ValueError(f"d_head must be a positive even integer for RoPE, got d_head={self.d_head}")
        if not self.rope and (self.max_len is None or self.max_len <= 0):
            raise ValueError(f"max_len must be a positive integer when rope=False (learned positions), "
                             f"got {self.max_len!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


# --- parameters --------------------------------------------------------------------------------


def _gpt_layout(cfg: GPTConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """name → (shape, init) in torch ``named_parameters()`` order; init is normal/zeros/ones."""
    d, f = cfg.d_model, cfg.d_ff
    out: dict[str, tuple[tuple[int, ...], str]] = {"embed.weight": ((cfg.vocab, d), "normal")}
    if not cfg.rope:
        out["pos.weight"] = ((cfg.max_len, d), "normal")

    def norm(prefix: str) -> None:
        out[f"{prefix}.weight"] = ((d,), "ones")
        if cfg.norm == "layernorm":
            out[f"{prefix}.bias"] = ((d,), "zeros")

    for i in range(cfg.n_layers):
        b = f"blocks.{i}"
        norm(f"{b}.ln1")
        for p in ("q", "k", "v", "o"):
            out[f"{b}.attn.{p}.weight"] = ((d, d), "normal")
        norm(f"{b}.ln2")
        if cfg.mlp == "swiglu":
            out[f"{b}.mlp.gate.weight"] = ((f, d), "normal")
            out[f"{b}.mlp.up.weight"] = ((f, d), "normal")
            out[f"{b}.mlp.down.weight"] = ((d, f), "normal")
        else:
            out[f"{b}.mlp.fc_in.weight"] = ((f, d), "normal")
            out[f"{b}.mlp.fc_in.bias"] = ((f,), "zeros")
            out[f"{b}.mlp.fc_out.weight"] = ((d, f), "normal")
            out[f"{b}.mlp.fc_out.bias"] = ((d,), "zeros")
    norm("ln_f")
    out["head.weight"] = ((cfg.vocab, d), "normal")
    out["head.bias"] = ((cfg.vocab,), "zeros")
    return out


def init_gpt(key: jax.Array, cfg: GPTConfig, dtype: Any = jnp.float32) -> Params:
    """Parameters of the torch ``GPT(..., tie_embeddings=False)``: same names, shapes and order.

    As ``torch_models._init_weights``: ``N(0, 0.02²)`` weights, zero biases, unit norm gains
    (the draws differ from torch's, of course).
    """
    layout = _gpt_layout(cfg)
    drawn = [(n, shape) for n, (shape, how) in layout.items() if how == "normal"]
    sizes = [math.prod(shape) for _, shape in drawn]
    flat = INIT_STD * jax.random.normal(key, (sum(sizes),), dtype)  # one draw: few eager compilations
    normal = dict(zip([n for n, _ in drawn], jnp.split(flat, np.cumsum(sizes)[:-1].tolist())))
    params: Params = {}
    for name, (shape, how) in layout.items():
        if how == "normal":
            params[name] = normal[name].reshape(shape)
        else:
            params[name] = (jnp.ones if how == "ones" else jnp.zeros)(shape, dtype)
    return params


def mlp_init(key: jax.Array, d_in: int, hidden: int, d_out: int, dtype: Any = jnp.float32) -> Params:
    """Parameters of the torch ``MLP(d_in, hidden, d_out)``, with ``nn.Linear``'s default init:
    weights and biases ``U(-1/√fan_in, 1/√fan_in)``."""
    shapes = {"fc_in.weight": (hidden, d_in), "fc_in.bias": (hidden,),
              "fc_out.weight": (d_out, hidden), "fc_out.bias": (d_out,)}
    fan_in = {"fc_in.weight": d_in, "fc_in.bias": d_in, "fc_out.weight": hidden, "fc_out.bias": hidden}
    sizes = [math.prod(s) for s in shapes.values()]
    flat = jax.random.uniform(key, (sum(sizes),), dtype, -1.0, 1.0)  # one draw, split below
    parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist())
    return {n: (1.0 / math.sqrt(fan_in[n])) * u.reshape(s) for (n, s), u in zip(shapes.items(), parts)}


# --- layers ------------------------------------------------------------------------------------
#
# Each layer is a jitted function of arrays (and static ints/bools), so that eager calls and
# eager ``jax.grad`` compile one small program per layer kind and shape, shared by all blocks and
# configurations, instead of one per primitive; under an outer ``jax.jit`` they are inlined.


def _linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``nn.Linear``: ``w`` is ``(out, in)``, ``y = x @ w.T + b``."""
    y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))
    return y if b is None else y + b


def _opmath(dtype: Any) -> Any:
    """torch's opmath type: float32 for float16/bfloat16, the dtype itself otherwise."""
    return jnp.promote_types(dtype, jnp.float32)


@jax.jit
def _rmsnorm(x: jax.Array, gain: jax.Array) -> jax.Array:
    """``nn.RMSNorm(d)`` with ``eps=None``: ``eps`` is the machine epsilon of the opmath type."""
    acc = _opmath(x.dtype)
    xa = x.astype(acc)
    eps = float(jnp.finfo(acc).eps)
    y = xa * jax.lax.rsqrt(jnp.mean(xa * xa, axis=-1, keepdims=True) + eps)
    return (y * gain.astype(acc)).astype(x.dtype)


@jax.jit
def _layernorm(x: jax.Array, gain: jax.Array, bias: jax.Array) -> jax.Array:
    """``nn.LayerNorm(d)``: biased variance, ``eps = 1e-5``."""
    acc = _opmath(x.dtype)
    xa = x.astype(acc)
    mean = jnp.mean(xa, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xa - mean), axis=-1, keepdims=True)
    y = (xa - mean) * jax.lax.rsqrt(var + LAYERNORM_EPS)
    return (y * gain.astype(acc) + bias.astype(acc)).astype(x.dtype)


def _rope(x: jax.Array, base: float = ROPE_BASE) -> jax.Array:
    """Interleaved RoPE on ``x``: ``(B, H, T, D)``, positions ``0..T-1`` (as ``RotaryEmbedding``)."""
    seq, d_head = x.shape[-2], x.shape[-1]
    freqs = base ** (-np.arange(0, d_head, 2, dtype=np.float64) / d_head)  # ω_j, (D/2,)
    angles = np.arange(seq, dtype=np.float64)[:, None] * freqs[None, :]  # (T, D/2), float64 as torch
    cos, sin = jnp.asarray(np.cos(angles), x.dtype), jnp.asarray(np.sin(angles), x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
    out = jnp.stack((cos * even - sin * odd, sin * even + cos * odd), axis=-1)  # (B, H, T, D/2, 2)
    return out.reshape(x.shape)


@partial(jax.jit, static_argnames=("n_heads", "rope"))
def _attention(wq: jax.Array, wk: jax.Array, wv: jax.Array, wo: jax.Array, x: jax.Array, *, n_heads: int,
               rope: bool) -> jax.Array:
    """Causal multi-head attention, ``x``: ``(B, T, d)``; head ``h`` is rows ``h·D:(h+1)·D`` of ``wq, wk, wv``."""
    batch, seq, _ = x.shape
    dh = wq.shape[0] // n_heads

    def heads(w: jax.Array) -> jax.Array:  # (B, T, H·D) → (B, H, T, D)
        return _linear(x, w).reshape(batch, seq, n_heads, dh).transpose(0, 2, 1, 3)

    q, k, v = heads(wq), heads(wk), heads(wv)
    if rope:
        q, k = _rope(q), _rope(k)
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(dh))  # (B, H, T, T)
    scores = jnp.where(jnp.tril(jnp.ones((seq, seq), dtype=bool)), scores, -jnp.inf)
    y = jax.nn.softmax(scores, axis=-1) @ v  # (B, H, T, D)
    return _linear(y.transpose(0, 2, 1, 3).reshape(batch, seq, n_heads * dh), wo)


@jax.jit
def _swiglu(w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array, x: jax.Array) -> jax.Array:
    return _linear(jax.nn.silu(_linear(x, w_gate)) * _linear(x, w_up), w_down)


@jax.jit
def _relu_mlp(w_in: jax.Array, b_in: jax.Array, w_out: jax.Array, b_out: jax.Array, x: jax.Array) -> jax.Array:
    return _linear(jax.nn.relu(_linear(x, w_in, b_in)), w_out, b_out)


_head = jax.jit(_linear)


@partial(jax.jit, static_argnames="ignore_index")
def _cross_entropy(logits: jax.Array, targets: jax.Array, ignore_index: int) -> jax.Array:
    """``F.cross_entropy`` (mean over the targets that are not ``ignore_index``)."""
    logp = jax.nn.log_softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)
    t = targets.reshape(-1)
    keep = t != ignore_index
    nll = -jnp.take_along_axis(logp, jnp.where(keep, t, 0)[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(keep, nll, 0)) / jnp.sum(keep).astype(nll.dtype)


def _norm(params: Params, prefix: str, x: jax.Array, cfg: GPTConfig) -> jax.Array:
    if cfg.norm == "rmsnorm":
        return _rmsnorm(x, params[f"{prefix}.weight"])
    return _layernorm(x, params[f"{prefix}.weight"], params[f"{prefix}.bias"])


def mlp_apply(params: Params, x: jax.Array) -> jax.Array:
    """``fc_out(relu(fc_in x))``: ``x`` ``(..., d_in)`` → ``(..., d_out)`` (torch ``MLP``/``ReluMLP``)."""
    return _relu_mlp(params["fc_in.weight"], params["fc_in.bias"], params["fc_out.weight"], params["fc_out.bias"], x)


def gpt_apply(params: Params, idx: jax.Array, cfg: GPTConfig) -> jax.Array:
    """Logits ``(B, T, vocab)`` for integer tokens ``idx`` ``(B, T)``, as torch ``GPT.forward``."""
    seq = idx.shape[1]
    x = params["embed.weight"][idx]  # (B, T, d)
    if not cfg.rope:
        if seq > cfg.max_len:
            raise ValueError(f"sequence length {seq} exceeds max_len={cfg.max_len}")
        x = x + params["pos.weight"][:seq]
    for i in range(cfg.n_layers):
        b = f"blocks.{i}"
        a = f"{b}.attn"
        x = x + _attention(params[f"{a}.q.weight"], params[f"{a}.k.weight"], params[f"{a}.v.weight"],
                           params[f"{a}.o.weight"], _norm(params, f"{b}.ln1", x, cfg),
                           n_heads=cfg.n_heads, rope=cfg.rope)
        h = _norm(params, f"{b}.ln2", x, cfg)
        m = f"{b}.mlp"
        if cfg.mlp == "swiglu":
            x = x + _swiglu(params[f"{m}.gate.weight"], params[f"{m}.up.weight"], params[f"{m}.down.weight"], h)
        else:
            x = x + _relu_mlp(params[f"{m}.fc_in.weight"], params[f"{m}.fc_in.bias"], params[f"{m}.fc_out.weight"],
                              params[f"{m}.fc_out.bias"], h)
    return _head(_norm(params, "ln_f", x, cfg), params["head.weight"], params["head.bias"])


def gpt_loss(params: Params, idx: jax.Array, targets: jax.Array, cfg: GPTConfig, *,
             ignore_index: int = -100) -> jax.Array:
    """Mean next-token cross-entropy over ``(B, T)`` targets, as torch ``GPT.loss``
    (``F.cross_entropy``: targets equal to ``ignore_index`` are left out of sum and count)."""
    return _cross_entropy(gpt_apply(params, idx, cfg), targets, ignore_index=ignore_index)


# --- conversion from torch -----------------------------------------------------------------------


def from_torch(model: Any) -> Params:
    """``{name: jnp array}`` for every entry of ``model.named_parameters()`` (detached copies).

    The dtype is kept (bfloat16 goes through float32, which is exact). Without
    ``jax_enable_x64``, JAX stores float64 tensors as float32.
    """
    import torch  # only needed here; the module itself does not depend on torch

    out: Params = {}
    for name, p in model.named_parameters():
        t = p.detach().cpu()
        if t.dtype == torch.bfloat16:
            out[name] = jnp.asarray(t.float().numpy(), jnp.bfloat16)
        else:
            out[name] = jnp.asarray(t.numpy())
    return out


def gpt_config_of(model: Any) -> GPTConfig:
    """The :class:`GPTConfig` of a torch :class:`~gaugemath.models.torch_models.GPT`."""
    if getattr(model, "tie_embeddings", False):
        raise ValueError("the JAX GPT has an untied head (head.weight is not embed.weight); "
                         "build the torch GPT with tie_embeddings=False")
    if len(model.blocks) == 0:
        raise ValueError("cannot read n_heads/d_ff from a GPT without blocks")
    block = model.blocks[0]
    ffn = block.mlp.up if model.mlp_kind == "swiglu" else block.mlp.fc_in
    return GPTConfig(vocab=model.vocab, d_model=model.d_model, n_layers=len(model.blocks),
                     n_heads=block.attn.n_heads, d_ff=ffn.out_features, max_len=model.max_len,
                     norm=model.norm_kind, mlp=model.mlp_kind, rope=model.rope)


# --- gauge bindings --------------------------------------------------------------------------------


def gpt_gauge_specs(cfg: GPTConfig) -> list[GaugeSpec]:
    """The gauge bindings of the GPT, identical to ``gaugemath.backends.torch.detect(GPT(...))``.

    Per block: ``ln1`` gain (consumers q, k, v), ``ln2`` gain (consumers gate, up or fc_in),
    ``head_rotation.rope`` / ``.norope``, ``swiglu_rescale.anchor`` / ``relu_rescale.anchor``;
    then the ``ln_f`` gain (consumer head) and ``ce_shift`` on the head.
    """
    kind = "norm_scale.layernorm" if cfg.norm == "layernorm" else "norm_scale.rmsnorm"

    def norm_spec(prefix: str, consumers: list[str]) -> GaugeSpec:
        roles: dict[str, Any] = {"gain": f"{prefix}.weight", "W": [f"{c}.weight" for c in consumers]}
        if cfg.norm == "layernorm":
            roles["bias"] = f"{prefix}.bias"
        return GaugeSpec(kind, roles, name=f"{prefix}: gain")

    specs: list[GaugeSpec] = []
    for i in range(cfg.n_layers):
        b = f"blocks.{i}"
        specs.append(norm_spec(f"{b}.ln1", [f"{b}.attn.q", f"{b}.attn.k", f"{b}.attn.v"]))
        ffn_in = [f"{b}.mlp.gate", f"{b}.mlp.up"] if cfg.mlp == "swiglu" else [f"{b}.mlp.fc_in"]
        specs.append(norm_spec(f"{b}.ln2", ffn_in))
        qk = {"W_Q": f"{b}.attn.q.weight", "W_K": f"{b}.attn.k.weight"}
        if cfg.rope:
            specs.append(GaugeSpec("head_rotation.rope", qk, name=f"{b}.attn"))
        else:
            specs.append(GaugeSpec("head_rotation.norope", qk, name=f"{b}.attn", d_head=cfg.d_head))
        if cfg.mlp == "swiglu":
            specs.append(GaugeSpec("swiglu_rescale.anchor", {"W_up": f"{b}.mlp.up.weight",
                                                             "W_down": f"{b}.mlp.down.weight"}, name=f"{b}.mlp"))
        else:
            specs.append(GaugeSpec("relu_rescale.anchor", {"W_in": f"{b}.mlp.fc_in.weight",
                                                           "b_in": f"{b}.mlp.fc_in.bias",
                                                           "W_out": f"{b}.mlp.fc_out.weight"}, name=f"{b}.mlp"))
    specs.append(norm_spec("ln_f", ["head"]))
    specs.append(GaugeSpec("ce_shift", {"W": "head.weight", "b": "head.bias"}, name="head"))
    return specs


def mlp_gauge_specs() -> list[GaugeSpec]:
    """The gauge binding of the MLP (``relu_rescale.balance``), identical to torch ``detect(MLP(...))``."""
    return [GaugeSpec("relu_rescale.balance", {"W_in": "fc_in.weight", "b_in": "fc_in.bias",
                                               "W_out": "fc_out.weight"}, name="fc_in→fc_out")]
