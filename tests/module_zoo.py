"""Modules a user could have written, with the Lie algebras their authors would state by hand.

Each entry builds an ``nn.Module`` at the widths it is given (plain ``torch.nn``, no gaugemath code), an
example input, the loss bind() is told, and ``expected``: the dimension of the algebra of affine parameter
symmetries worked out by hand (below, per module), how many of its families the backends apply, and
``transform``: one group element of the bound families written with plain tensor operations, for the
protocol at full width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Module:
    name: str
    factory: Callable[..., nn.Module]
    widths: list[dict]  # the small instances discovery runs on
    full: dict  # the width the model is trained at
    example: Callable[[nn.Module], tuple]
    loss: str | None
    dim: Callable[[dict], int]  # expected algebra dimension at a width (hand-derived)
    bound: int  # families the backends apply
    transform: Callable[[nn.Module, torch.Generator], None] | None = None  # a hand-written group element


def _scale(n, gen):
    return torch.exp(torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1)


# 1. squared-ReLU MLP, every output invariant: unit k (W1[k], b1[k]) × α, W2[:, k] × α^-2 (relu² is
#    homogeneous of degree 2). dim = h. Backends: the α^-2 exponent is refused (reported; nothing bound).
#    (With cross-entropy the softmax saturates at random points of relu²'s quartic logits and the numeric
#    rank has no clear gap, which discover reports as an error.)
class SquaredReLU(nn.Module):
    def __init__(self, d=2, h=2, c=2):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, c)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)) ** 2)


# 2. GeGLU: down(gelu(gate x) ⊙ (up x + b_up)): unit k of up (W_up[k], b_up[k]) × α, W_down[:, k] × α^-1
#    (gelu has no scaling property, so the gate does not move). dim = h.
class GeGLU(nn.Module):
    def __init__(self, d=2, h=2):
        super().__init__()
        self.gate, self.up = nn.Linear(d, h, bias=False), nn.Linear(d, h)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.gate(x)) * self.up(x))


# 3. leaky-ReLU MLP (slope 0.2) with cross-entropy: unit rescale (h) + logit shift (h + 1). dim = 2h + 1.
class LeakyMLP(nn.Module):
    def __init__(self, d=2, h=2, c=2):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, c)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(x), 0.2))


# 4. per-unit output scale: W2 (s ⊙ relu(W1 x + b1)): (W1[k], b1[k]) × α with s_k × α^-1, and s_k × β with
#    W2[:, k] × β^-1. dim = 2h. Discovery's basis is (s_k, W2[:, k]) and ((W1[k], b1[k]), W2[:, k]): two
#    scalings of one slice (W2[:, k]), which the joint projector does not solve, so the first binds and the
#    second is reported.
class OutputScale(nn.Module):
    def __init__(self, d=2, h=2, c=1):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.s = nn.Parameter(torch.rand(h) + 0.5)
        self.fc2 = nn.Linear(h, c, bias=False)

    def forward(self, x):
        return self.fc2(self.s * F.relu(self.fc1(x)))


# 5. attention with separate value and output maps, one head of width d_head, no biases, no RoPE:
#    Q/K: W_Q → A W_Q, W_K → A^{-T} W_K (gl(d_head)); V/O: W_V → B W_V, W_O → W_O B^{-1} (gl(d_head)).
#    dim = 2 d_head² per head. Their diagonal parts (q row j × α with k row j × α^-1; v row j × β with o
#    column j × β^-1) are per-unit scalings and bind; the off-diagonal (mixing) generators are reported.
class Attention(nn.Module):
    def __init__(self, d=2, heads=1, kv_heads=1, d_head=2):
        super().__init__()
        self.h, self.kv, self.dh = heads, kv_heads, d_head
        self.q = nn.Linear(d, heads * d_head, bias=False)
        self.k = nn.Linear(d, kv_heads * d_head, bias=False)
        self.v = nn.Linear(d, kv_heads * d_head, bias=False)
        self.o = nn.Linear(heads * d_head, d, bias=False)

    def forward(self, x):  # x (b, t, d)
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.dh).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv, self.dh).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv, self.dh).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.h != self.kv)
        return self.o(y.transpose(1, 2).reshape(b, t, self.h * self.dh))


# 6. grouped-query attention (2 query heads share 1 key/value head): the same gl(d_head) pairs per kv group,
#    acting on both query heads of the group and on both heads' output columns. dim = 2 d_head² per kv head.
def gqa(d=2, d_head=2):
    return Attention(d, heads=2, kv_heads=1, d_head=d_head)


def _mlp_example(m):
    first = next(p for p in m.parameters() if p.dim() == 2)
    return (torch.randn(1, first.shape[1], generator=torch.Generator().manual_seed(0)),)


def _leaky_transform(m, gen):
    a = _scale(m.fc1.out_features, gen)
    with torch.no_grad():
        m.fc1.weight.mul_(a[:, None])
        m.fc1.bias.mul_(a)
        m.fc2.weight.div_(a[None, :])
        v = torch.randn(m.fc2.in_features, generator=gen, dtype=torch.float64)
        m.fc2.weight.add_(v[None, :])  # logit shift: every class row gets the same vᵀ
        m.fc2.bias.add_(torch.randn((), generator=gen, dtype=torch.float64))


def _geglu_transform(m, gen):
    a = _scale(m.up.out_features, gen)
    with torch.no_grad():
        m.up.weight.mul_(a[:, None])
        m.up.bias.mul_(a)
        m.down.weight.div_(a[None, :])


def _output_scale_transform(m, gen):  # the family that binds: s_k × α with W2[:, k] × α^-1
    a = _scale(m.fc1.out_features, gen)
    with torch.no_grad():
        m.s.mul_(a)
        m.fc2.weight.div_(a[None, :])


def _vo_transform(m, gen):
    a, b = _scale(m.q.out_features, gen), _scale(m.v.out_features, gen)
    with torch.no_grad():
        m.q.weight.mul_(a[:, None])
        m.k.weight.div_(a[:, None])
        m.v.weight.mul_(b[:, None])
        m.o.weight.div_(b[None, :])


def _attn_example(m):  # 3 positions: with 2, causal attention leaves the numeric rank ambiguous (measured)
    return (torch.randn(1, 3, m.q.in_features, generator=torch.Generator().manual_seed(0)),)


MODULES = [
    Module("squared-ReLU MLP", SquaredReLU, [dict(h=2), dict(h=3)], dict(d=8, h=32, c=4), _mlp_example,
           None, lambda w: w["h"], 0),
    Module("GeGLU", GeGLU, [dict(h=2), dict(h=3)], dict(d=8, h=32), _mlp_example, None, lambda w: w["h"], 1,
           _geglu_transform),
    Module("leaky-ReLU MLP", LeakyMLP, [dict(h=2), dict(h=3)], dict(d=8, h=32, c=4), _mlp_example,
           "cross_entropy", lambda w: 2 * w["h"] + 1, 3, _leaky_transform),
    Module("per-unit output scale", OutputScale, [dict(h=2), dict(h=3)], dict(d=8, h=32, c=3), _mlp_example, None,
           lambda w: 2 * w["h"], 1, _output_scale_transform),
    Module("value-output per head", Attention, [dict()], dict(d=8, d_head=4), _attn_example, None,
           lambda w: 2 * w.get("d_head", 2) ** 2, 2, _vo_transform),
    Module("grouped-query attention", gqa, [dict()], dict(d=8, d_head=4), _attn_example, None,
           lambda w: 2 * w.get("d_head", 2) ** 2, 0),
]
