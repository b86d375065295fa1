"""Symbolic reference layers in which the catalogue gauges live.

Each function builds SymPy expressions for a forward pass. Every intermediate quantity
(pre-activation, score, variance, logit) goes through ``stage`` so that a proof can put it in
canonical form (finite invariance) or truncate it to first order (infinitesimal invariance).
Vectors are ``d×1`` :class:`sympy.Matrix` columns.
"""

from __future__ import annotations

import math

import sympy as sp

from .activations import Relu, silu

Stage = "Callable[[sp.Expr], sp.Expr]"


def affine(w: sp.Matrix, x: sp.Matrix, b: sp.Matrix | None, stage) -> sp.Matrix:
    """``W x + b`` (``(m×d)·(d×1) + (m×1)``), entry-wise staged."""
    y = w * x
    if b is not None:
        y = y + b
    return y.applyfunc(stage)


def layer_norm(x: sp.Matrix, eps: sp.Expr, stage) -> sp.Matrix:
    """Normalised part of LayerNorm: ``(x - mean(x)) / sqrt(var(x) + ε)`` (no gain/bias)."""
    d = x.rows
    mu = stage(sum(x) / d)
    c = (x - sp.ones(d, 1) * mu).applyfunc(stage)
    var = stage(sum(e**2 for e in c) / d + eps)
    inv_std = stage(1 / sp.sqrt(var))
    return (c * inv_std).applyfunc(stage)


def rms_norm(x: sp.Matrix, eps: sp.Expr, stage) -> sp.Matrix:
    """Normalised part of RMSNorm: ``x / sqrt(mean(x²) + ε)``."""
    ms = stage(sum(e**2 for e in x) / x.rows + eps)
    inv_rms = stage(1 / sp.sqrt(ms))
    return (x * inv_rms).applyfunc(stage)


def normalise(kind: str, x: sp.Matrix, eps: sp.Expr, stage) -> sp.Matrix:
    if kind == "layernorm":
        return layer_norm(x, eps, stage)
    if kind == "rmsnorm":
        return rms_norm(x, eps, stage)
    raise ValueError(f"unknown norm kind {kind!r} (expected 'layernorm' or 'rmsnorm')")


def gain_bias(n: sp.Matrix, gain: sp.Matrix, bias: sp.Matrix | None, stage) -> sp.Matrix:
    """``γ ⊙ n + β``."""
    y = sp.matrix_multiply_elementwise(gain, n)
    if bias is not None:
        y = y + bias
    return y.applyfunc(stage)


def relu_mlp(x, w_in, b_in, w_out, b_out, stage) -> sp.Matrix:
    """``W_out relu(W_in x + b_in) + b_out``."""
    h = affine(w_in, x, b_in, stage).applyfunc(Relu).applyfunc(stage)
    return affine(w_out, h, b_out, stage)


def swiglu_mlp(x, w_gate, w_up, w_down, stage) -> sp.Matrix:
    """``W_down (silu(W_gate x) ⊙ (W_up x))`` with ``silu(z) = z / (1 + e^{-z})``."""
    gate = affine(w_gate, x, None, stage).applyfunc(lambda z: silu(z, stage))
    up = affine(w_up, x, None, stage)
    return affine(w_down, sp.matrix_multiply_elementwise(gate, up), None, stage)


def cross_entropy(z: sp.Matrix, p: sp.Matrix) -> sp.Expr:
    """``CE(z, p) = log Σ_i exp(z_i) - Σ_i p_i z_i`` with soft targets ``Σ p_i = 1``."""
    return sp.log(sum(sp.exp(e) for e in z)) - sum(pi * zi for pi, zi in zip(p, z))


def soft_targets(name: str, classes: int) -> sp.Matrix:
    """Targets ``p`` with ``p_last = 1 - Σ_{i<last} p_i`` (so ``Σ p = 1`` exactly)."""
    free = sp.symbols(f"{name}_0:{classes - 1}", real=True)
    return sp.Matrix([*free, 1 - sum(free)])


def rope_rotation(name: str, planes: int) -> sp.Matrix:
    """A RoPE position rotation: per frequency plane ``j`` the block ``c_j I + s_j J``.

    RoPE's block is the rotation by ``pos·ω_j`` (``c = cos``, ``s = sin``). The symbols are
    left free (``c² + s² = 1`` is *not* imposed), so an identity proved here holds for every
    position and frequency, and the expressions stay polynomial.
    """
    cs = sp.symbols(f"{name}c_0:{planes}", real=True)
    ss = sp.symbols(f"{name}s_0:{planes}", real=True)
    return sp.diag(*[sp.Matrix([[c, -s], [s, c]]) for c, s in zip(cs, ss)])


def rope_values(name: str, planes: int, position: int, base: float = 10000.0) -> dict[sp.Symbol, sp.Float]:
    """Numerical values of :func:`rope_rotation`'s symbols for RoPE at ``position``:
    ``c_j = cos(position·ω_j)``, ``s_j = sin(position·ω_j)``, ``ω_j = base^(-j/planes)``."""
    out = {}
    for j in range(planes):
        angle = position * base ** (-j / planes)
        out[sp.Symbol(f"{name}c_{j}", real=True)] = sp.Float(math.cos(angle), 30)
        out[sp.Symbol(f"{name}s_{j}", real=True)] = sp.Float(math.sin(angle), 30)
    return out


def rope_generator(frequencies) -> sp.Matrix:
    """``Ω = ⊕_j ω_j J``, the generator of RoPE's rotations ``R_pos = exp(pos Ω)``."""
    j = sp.Matrix([[0, -1], [1, 0]])
    return sp.diag(*[w * j for w in frequencies])


def attention_scores(qs: list[sp.Matrix], ks: list[sp.Matrix], stage) -> list[sp.Expr]:
    """Causal scores ``s_mn = q_mᵀ k_n`` for ``n ≤ m``."""
    return [stage((qs[m].T * ks[n])[0]) for m in range(len(qs)) for n in range(m + 1)]


def causal_attention(qs, ks, vs, stage) -> list[sp.Matrix]:
    """``o_m = Σ_{n≤m} softmax_n(s_mn) v_n``."""
    out = []
    for m in range(len(qs)):
        s = [stage((qs[m].T * ks[n])[0]) for n in range(m + 1)]
        e = [stage(sp.exp(v)) for v in s]
        inv_z = stage(1 / stage(sum(e)))
        o = sum((stage(en * inv_z) * vs[n] for n, en in enumerate(e)), sp.zeros(vs[0].rows, 1))
        out.append(o.applyfunc(stage))
    return out
