"""``DDCAdamLogNorm`` (``frame="lognorm"``, the Lean model's construction; ddc.md §3).

The gauge transformations here are written out by hand on the models' own parameters: unit rows
times ``α``, consumer columns over ``α``, head columns plus ``v``. They do not use the library's
``Binding.act``. Run A trains from ``θ`` on its own gradients. Run B starts at ``g·θ`` and gets
``g_B = D(g)^{-T} g_A``. The deviation is ``‖θ_B,t − g·θ_A,t‖ / ‖g·θ_A,t‖`` over all parameters,
with ``g·θ_A,t`` computed in fp64 from run A's stored values.

Tolerances. Every step, each stored parameter of run B and each gradient ``g_B`` is rounded once
(≤ ε/2 relative). These roundings are independent, so they add in quadrature, and over ``T`` steps
the deviation is about ``√T·ε`` times the step's amplification of an input error. Adam's
normalisation of a coordinate with a small second moment makes that amplification O(1–10). With
``T = 50``: fp32 ``√50·ε₃₂ = 8.4e-7``, checked against the paper's bar of 1e-6. fp64
``√50·ε₆₄ = 1.6e-15``, checked against 1e-12, which leaves 600× for the amplification. The measured
values are in docs/backends/lognorm.md.
"""

import copy
import math

import pytest
import torch
from gaugemath.backends.torch import GaugeSpec, bind
from gaugemath.backends.torch.lognorm import DDCAdamLogNorm
from torch import nn

from gaugemath.errors import GaugeError

STEPS = 50
BAR = {torch.float32: 1e-6, torch.float64: 1e-12}  # see the module docstring


# ------------------------------------------------------------------ models, losses, hand-written gauges
def relu_mlp():
    """``y = W₂ relu(W₀x + b₀) + b₂``; gauge: hidden unit ``k``'s row and bias times ``α_k``, column over ``α_k``."""
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    specs = [GaugeSpec("relu_rescale.balance", {"W_in": "0.weight", "b_in": "0.bias", "W_out": "2.weight"},
                       name="mlp")]

    def loss(m, gen):
        x = torch.randn(32, 5, generator=gen, dtype=m[0].weight.dtype)
        y = torch.randn(32, 3, generator=gen, dtype=m[0].weight.dtype)
        return (m(x) - y).pow(2).mean()

    def element(gen):
        return {"a": torch.exp(3 * torch.rand(16, generator=gen, dtype=torch.float64) - 1.5)}

    def act(g, t, covector=False):
        a = 1 / g["a"] if covector else g["a"]
        t["0.weight"] = t["0.weight"] * a[:, None]
        t["0.bias"] = t["0.bias"] * a
        t["2.weight"] = t["2.weight"] / a[None, :]
        return t

    example = (torch.randn(4, 5),)
    return model, specs, loss, element, act, dict(example=example)


def norm_block(kind: str):
    """MLP → norm → classifier head, cross-entropy: the unit rescale (rows of ``0``, columns of ``2``), the
    norm gain (``γ``, ``β`` and the head's columns) and the logit shift (head columns plus ``v``, bias plus
    ``c``) on one block. The head's columns carry both the gain and the shift."""
    norm = nn.LayerNorm(6) if kind == "layernorm" else nn.RMSNorm(6)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 6), norm, nn.Linear(6, 4))
    gain_roles = {"gain": "3.weight", "W": "4.weight"}
    if kind == "layernorm":
        gain_roles["bias"] = "3.bias"
    specs = [GaugeSpec("relu_rescale.balance", {"W_in": "0.weight", "b_in": "0.bias", "W_out": "2.weight"},
                       name="mlp"),
             GaugeSpec(f"norm_scale.{kind}", gain_roles, name="norm"),
             GaugeSpec("ce_shift", {"W": "4.weight", "b": "4.bias"}, name="head")]
    with torch.no_grad():  # a gain and bias away from (1, 0), so the block is generic
        norm.weight.uniform_(0.5, 1.5)
        if kind == "layernorm":
            norm.bias.uniform_(-0.5, 0.5)

    def loss(m, gen):
        x = torch.randn(32, 5, generator=gen, dtype=m[0].weight.dtype)
        y = torch.randint(0, 4, (32,), generator=gen)
        return nn.functional.cross_entropy(m(x), y)

    def element(gen):
        d = torch.float64
        return {"a": torch.exp(3 * torch.rand(12, generator=gen, dtype=d) - 1.5),
                "s": torch.exp(3 * torch.rand(6, generator=gen, dtype=d) - 1.5),
                "v": torch.randn(6, generator=gen, dtype=d), "c": torch.randn((), generator=gen, dtype=d)}

    def act(g, t, covector=False):  # the scales, then the shift (whose covector action is the identity)
        a = 1 / g["a"] if covector else g["a"]
        s = 1 / g["s"] if covector else g["s"]
        t["0.weight"] = t["0.weight"] * a[:, None]
        t["0.bias"] = t["0.bias"] * a
        t["2.weight"] = t["2.weight"] / a[None, :]
        t["3.weight"] = t["3.weight"] * s
        if kind == "layernorm":
            t["3.bias"] = t["3.bias"] * s
        t["4.weight"] = t["4.weight"] / s[None, :]
        if not covector:
            t["4.weight"] = t["4.weight"] + g["v"][None, :]
            t["4.bias"] = t["4.bias"] + g["c"]
        return t

    example = (torch.randn(4, 5),)
    return model, specs, loss, element, act, dict(example=example, loss="cross_entropy")


def lognorm(model, binding, **kw):
    return DDCAdamLogNorm(model.parameters(), binding=binding, lr=1e-2, weight_decay=0.1, **kw)


def adamw(model, binding):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def protocol(case, dtype, make_opt=lognorm, steps=STEPS, seed=0, element=None, act=None, **opt_kw) -> list[float]:
    """The deviation after each step (see the module docstring)."""
    torch.manual_seed(seed)
    model, specs, loss_fn, elem, act0, bind_kw = case()
    element, act = element or elem, act or act0
    model = model.to(dtype)
    bind_kw = {**bind_kw, "example": tuple(x.to(dtype) for x in bind_kw["example"])}
    model_b = copy.deepcopy(model)
    g = element(torch.Generator().manual_seed(seed + 1))

    def image(m):
        return act(g, {n: p.detach().to(torch.float64) for n, p in m.named_parameters()})

    with torch.no_grad():
        for n, x in image(model).items():
            dict(model_b.named_parameters())[n].copy_(x)
    opt_a = make_opt(model, bind(model, specs, **bind_kw), **opt_kw)
    opt_b = make_opt(model_b, bind(model_b, specs, **bind_kw), **opt_kw)
    data = torch.Generator().manual_seed(seed + 2)
    params_b = dict(model_b.named_parameters())
    devs = []
    for _ in range(steps):
        opt_a.zero_grad()
        loss_fn(model, data).backward()
        grads = act(g, {n: p.grad.to(torch.float64) for n, p in model.named_parameters()}, covector=True)
        for n, x in grads.items():
            params_b[n].grad = x.to(dtype)
        opt_a.step()
        opt_b.step()
        want = image(model)
        num = sum(float((params_b[n].detach().double() - x).pow(2).sum()) for n, x in want.items())
        den = sum(float(x.pow(2).sum()) for x in want.values())
        devs.append(math.sqrt(num / den))
    return devs


CASES = {"relu_mlp": relu_mlp, "layernorm_block": lambda: norm_block("layernorm"),
         "rmsnorm_block": lambda: norm_block("rmsnorm")}


# ------------------------------------------------------------------ (a) the protocol, (b) the AdamW control
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_protocol(name, dtype):
    devs = protocol(CASES[name], dtype)
    assert len(devs) == STEPS and max(devs) < BAR[dtype], (name, dtype, max(devs))


@pytest.mark.parametrize("name", sorted(CASES))
def test_adamw_fails_the_protocol(name):
    devs = protocol(CASES[name], torch.float32, make_opt=adamw)
    assert max(devs) > 1e3 * BAR[torch.float32], (name, max(devs))


@pytest.mark.parametrize("vertical", ["sgd", "adam"])
def test_protocol_other_vertical_policies(vertical):
    """The vertical channel's inputs are invariant too; with the round-off floor nothing changes."""
    devs = protocol(CASES["layernorm_block"], torch.float64, vertical=vertical)
    assert max(devs) < BAR[torch.float64]


def test_protocol_decay_split_over_param_groups():
    """nanoGPT's split: matrices decayed, gains and biases not. Each tensor shrinks by its own group's
    (1 − ηλ), which commutes with scaling a block (a diagonal map commutes with a scalar)."""

    def split(model, binding):
        decay = [p for p in model.parameters() if p.dim() == 2]
        rest = [p for p in model.parameters() if p.dim() != 2]
        return DDCAdamLogNorm([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                              binding=binding, lr=1e-2)

    assert max(protocol(CASES["layernorm_block"], torch.float64, make_opt=split)) < BAR[torch.float64]


def test_commutes_with_any_per_block_scaling():
    """ddcadamChain_equivariant is stronger than the gauge: the update commutes with scaling each
    block by its own positive number (not a symmetry of the loss; the gradients are transformed)."""

    def element(gen):
        d = torch.float64
        return {"in": torch.exp(3 * torch.rand(16, generator=gen, dtype=d) - 1.5),
                "out": torch.exp(3 * torch.rand(16, generator=gen, dtype=d) - 1.5)}

    def act(g, t, covector=False):
        a, b = (1 / g["in"], 1 / g["out"]) if covector else (g["in"], g["out"])
        t["0.weight"] = t["0.weight"] * a[:, None]
        t["0.bias"] = t["0.bias"] * a
        t["2.weight"] = t["2.weight"] * b[None, :]
        return t

    assert max(protocol(relu_mlp, torch.float64, element=element, act=act)) < BAR[torch.float64]
    assert max(protocol(relu_mlp, torch.float64, make_opt=adamw, element=element, act=act)) > 1e-3


def test_matches_a_literal_per_unit_transcription():
    """The step, written unit by unit from the Lean definitions (hatg, gtan, tangIn, reproj, gU,
    applyBlock with δ = 1 − ηλ), against the optimizer, in fp64: ReLU MLP, 10 steps, b₂ free (AdamW)."""
    torch.manual_seed(0)
    model, specs, loss_fn, _, _, _ = relu_mlp()
    model = model.double()
    lr, wd, (b1, b2), eps = 1e-2, 0.1, (0.9, 0.999), 1e-8
    opt = DDCAdamLogNorm(model.parameters(), binding=bind(model, specs, check=False), lr=lr, weight_decay=wd)
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in ref.items()}
    v = {n: torch.zeros_like(p) for n, p in ref.items()}
    mr, vr = torch.zeros(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    data = torch.Generator().manual_seed(0)

    def adam(mm, vv, x, t):
        mm.mul_(b1).add_((1 - b1) * x)
        vv.mul_(b2).add_((1 - b2) * x * x)
        return (mm / (1 - b1**t)) / ((vv / (1 - b2**t)).sqrt() + eps)

    for t in range(1, 11):
        opt.zero_grad()
        loss_fn(model, data).backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        delta = 1 - lr * wd
        blocks = []  # per unit: (W₊, g₊), (W₋, g₋)
        for k in range(16):
            wp = delta * torch.cat([ref["0.weight"][k], ref["0.bias"][k : k + 1]])
            gp = torch.cat([g["0.weight"][k], g["0.bias"][k : k + 1]])
            wm, gm = delta * ref["2.weight"][:, k], g["2.weight"][:, k]
            blocks.append(((wp, gp), (wm, gm)))
        hat = [[float(gg @ w) for w, gg in unit] for unit in blocks]
        tang = [[w.norm() * (gg - (gg @ w) / (w @ w) * w) for w, gg in unit] for unit in blocks]
        x_in = torch.stack([tp[:-1] for tp, _ in tang])
        x_b = torch.stack([tp[-1] for tp, _ in tang])
        x_out = torch.stack([tm for _, tm in tang], dim=1)
        u = {"0.weight": adam(m["0.weight"], v["0.weight"], x_in, t), "0.bias": adam(m["0.bias"], v["0.bias"], x_b, t),
             "2.weight": adam(m["2.weight"], v["2.weight"], x_out, t)}
        g_u = torch.tensor([(a + b) / math.sqrt(2) for a, b in hat], dtype=torch.float64)
        radial = adam(mr, vr, g_u, t)
        for k, ((wp, _), (wm, _)) in enumerate(blocks):
            up = torch.cat([u["0.weight"][k], u["0.bias"][k : k + 1]])
            um = u["2.weight"][:, k]
            up, um = up - (up @ wp) / (wp @ wp) * wp, um - (um @ wm) / (wm @ wm) * wm
            r = -lr * float(radial[k]) / math.sqrt(2)  # vertical frozen: Δlog ρ₊ = Δlog ρ₋ = −η Û/√2
            newp = math.exp(r) * wp - lr * wp.norm() * up
            ref["0.weight"][k], ref["0.bias"][k] = newp[:-1], newp[-1]
            ref["2.weight"][:, k] = math.exp(r) * wm - lr * wm.norm() * um
        ub = adam(m["2.bias"], v["2.bias"], g["2.bias"], t)  # the free tensor: AdamW
        ref["2.bias"] = ref["2.bias"] * delta - lr * ub
        for n, p in model.named_parameters():
            assert torch.allclose(p, ref[n], rtol=1e-12, atol=1e-14), (t, n)


class _StoredInOut(nn.Module):
    """``relu(x @ w_in + b_in) @ w_out``: weights stored ``(in, out)``, bound transposed."""

    def __init__(self):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(5, 16) / 5**0.5)
        self.b_in = nn.Parameter(torch.randn(16) / 4)
        self.w_out = nn.Parameter(torch.randn(16, 3) / 4)

    def forward(self, x):
        return torch.relu(x @ self.w_in + self.b_in) @ self.w_out


def stored_in_out():
    from gaugemath.backends.torch import TensorView

    specs = [GaugeSpec("relu_rescale.balance", {"W_in": TensorView("w_in", transpose=True), "b_in": "b_in",
                                                "W_out": TensorView("w_out", transpose=True)}, name="mlp")]

    def loss(m, gen):
        x = torch.randn(32, 5, generator=gen, dtype=m.w_in.dtype)
        return (m(x) - torch.randn(32, 3, generator=gen, dtype=m.w_in.dtype)).pow(2).mean()

    def element(gen):
        return {"a": torch.exp(3 * torch.rand(16, generator=gen, dtype=torch.float64) - 1.5)}

    def act(g, t, covector=False):  # unit k: column k of w_in, b_in[k], row k of w_out
        a = 1 / g["a"] if covector else g["a"]
        t["w_in"], t["b_in"], t["w_out"] = t["w_in"] * a[None, :], t["b_in"] * a, t["w_out"] / a[:, None]
        return t

    return _StoredInOut(), specs, loss, element, act, dict(example=(torch.randn(4, 5),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_protocol_weights_stored_in_out(dtype):
    assert max(protocol(stored_in_out, dtype)) < BAR[dtype]


def swiglu_signed():
    """SwiGLU ``down(silu(gate x) ⊙ up x)``: unit ``k``'s ``up`` row times ``α_k``, ``down`` column over
    ``α_k``, with ``α_k`` of either sign (the group is ℝ≠0; the Lean model states ``c > 0``)."""
    from gaugemath.models import SwiGLU

    specs = [GaugeSpec("swiglu_rescale.balance", {"W_up": "up.weight", "W_down": "down.weight"}, name="mlp")]

    def loss(m, gen):
        x = torch.randn(32, 6, generator=gen, dtype=m.up.weight.dtype)
        return (m(x) - torch.randn(32, 6, generator=gen, dtype=m.up.weight.dtype)).pow(2).mean()

    def element(gen):
        a = torch.exp(3 * torch.rand(8, generator=gen, dtype=torch.float64) - 1.5)
        return {"a": a * torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)}

    def act(g, t, covector=False):
        a = 1 / g["a"] if covector else g["a"]
        t["up.weight"], t["down.weight"] = t["up.weight"] * a[:, None], t["down.weight"] / a[None, :]
        return t

    return SwiGLU(6, 8), specs, loss, element, act, dict(example=(torch.randn(4, 6),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_protocol_swiglu_negative_scales(dtype):
    """ρ(cW) = |c|ρ, so ρ·g_tan flips sign with c; Adam is odd in its input and its state starts at zero,
    so u flips too and exp(r)·cW − η|c|ρ·sign(c)u = c·(exp(r)W − ηρu)."""
    assert max(protocol(swiglu_signed, dtype)) < BAR[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_protocol_tiny_gpt_lean_gauges(dtype):
    """Every gauge of tiny_gpt (RMSNorm, SwiGLU, RoPE, CE head) that the Lean model covers without overlap:
    ln1 gains (three consumers each), ln_f gain and the head shift on one matrix, the SwiGLU rescales.
    The rotations are outside the model, and ln2 overlaps the SwiGLU rows of ``up``. This composite
    uses the library's ``Binding.act`` and ``random_element``, not a hand-written element."""
    from gaugemath.backends.torch import detect

    from gaugemath.models import tiny_gpt
    from gaugemath.verify import random_element

    torch.manual_seed(0)
    model = tiny_gpt().to(dtype)
    specs = [s for s in detect(model) if not s.family.startswith("head_rotation") and "ln2" not in s.name]
    assert len(specs) == 6
    twin = copy.deepcopy(model)
    ba, bb = bind(model, specs, check=False), bind(twin, specs, check=False)
    g = random_element(ba, torch.Generator().manual_seed(1), dtype)
    with torch.no_grad():
        bb.act(g, [p for _, p in bb.params])
    opts = [lognorm(model, ba), lognorm(twin, bb)]
    data = torch.Generator().manual_seed(2)
    worst = 0.0
    for _ in range(STEPS):
        for o in opts:
            o.zero_grad()
        idx = torch.randint(0, 11, (4, 8), generator=data)
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        grads = [p.grad.clone() for _, p in ba.params]
        ba.act(g, grads, covector=True)
        for (_, p), x in zip(bb.params, grads):
            p.grad = x
        for p, q in zip(model.parameters(), twin.parameters()):
            if q.grad is None:
                q.grad = p.grad.clone()
        for o in opts:
            o.step()
        with torch.no_grad():
            image = [p.detach().clone() for _, p in ba.params]
            ba.act(g, image)
            num = sum(float((p - x).pow(2).sum()) for (_, p), x in zip(bb.params, image))
            worst = max(worst, math.sqrt(num / sum(float(x.pow(2).sum()) for x in image)))
    assert worst < BAR[dtype], worst


# ------------------------------------------------------------------ (c) no gauges: AdamW
def test_no_gauges_is_adamw():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    ours = DDCAdamLogNorm(model.parameters(), binding=None, lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        x, y = torch.randn(16, 5, generator=gen), torch.randn(16, 3, generator=gen)
        for m, o in ((model, ours), (ref, theirs)):
            o.zero_grad()
            (m(x) - y).pow(2).mean().backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ (d) vertical round-off never becomes a step
def _train(model, binding, loss_fn, steps, **kw):
    opt = DDCAdamLogNorm(model.parameters(), binding=binding, lr=1e-2, weight_decay=0.0, **kw)
    data = torch.Generator().manual_seed(5)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, data).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_vertical_roundoff_never_becomes_a_step():
    """Invariant loss: the gauge-mode scalar g_V = (ĝ₊ − ĝ₋)/√2 is exactly zero and what is computed is
    round-off. Normalised by Adam it would be a unit step along the orbit. Its floor makes it exactly
    zero, so the vertical 'adam' and 'sgd' channels produce bit-for-bit the frozen run. With a term that
    breaks the gauge they do not: the channel is live."""
    torch.manual_seed(0)
    model, specs, loss_fn, _, _, bind_kw = relu_mlp()
    model = model.double()
    bind_kw = {"example": (bind_kw["example"][0].double(),)}
    # the round-off is really there: ĝ₊ − ĝ₋ for the hidden units at θ₀
    loss_fn(model, torch.Generator().manual_seed(5)).backward()
    w0, b0, w2 = model[0].weight, model[0].bias, model[2].weight
    g_plus = (w0.grad * w0).sum(1) + b0.grad * b0
    g_minus = (w2.grad * w2).sum(0)
    assert (g_plus - g_minus).abs().max() > 0
    assert (g_plus - g_minus).abs().max() < 1e-12 * (g_plus.abs().max() + 1e-300)
    model.zero_grad()
    runs = {}
    for vertical in ("freeze", "sgd", "adam"):
        m = copy.deepcopy(model)
        runs[vertical] = _train(m, bind(m, specs, **bind_kw), loss_fn, 30, vertical=vertical)
    for vertical in ("sgd", "adam"):
        assert all(torch.equal(p, q) for p, q in zip(runs["freeze"], runs[vertical])), vertical

    def broken(m, gen):  # + an explicit regulariser on W_in alone: not gauge-invariant
        return loss_fn(m, gen) + 0.1 * m[0].weight.pow(2).sum()

    out = {}
    for vertical in ("freeze", "adam"):
        m = copy.deepcopy(model)
        out[vertical] = _train(m, bind(m, specs, check=False), broken, 5, vertical=vertical)
    assert not torch.equal(out["freeze"][0], out["adam"][0])


def test_frozen_vertical_keeps_the_gauge_mode_to_second_order():
    """vertical='freeze', no decay: log ρ₊ − log ρ₋ of each unit moves only by the tangential step's
    second-order norm growth, ½ log((e^{2r} + η²‖u₊‖²)/(e^{2r} + η²‖u₋‖²)) = O(η²), not by O(η)."""
    torch.manual_seed(0)
    model, specs, loss_fn, _, _, bind_kw = relu_mlp()
    model = model.double()

    def mode(m):
        plus = (m[0].weight.pow(2).sum(1) + m[0].bias.pow(2)).log()
        return 0.5 * (plus - m[2].weight.pow(2).sum(0).log())

    before = mode(model).detach()
    _train(model, bind(model, specs, check=False), loss_fn, 1)
    radial = mode(model).detach() - before
    # first step: u = ±1 per coordinate, so ‖u‖² ≤ n ≤ 6 (W_in row + bias); an O(η) vertical step would be ~7e-3
    assert 0 < radial.abs().max() < 1e-2**2 * 6


# ------------------------------------------------------------------ refusals, all-or-nothing, state
def test_rotation_gauge_is_refused():
    from gaugemath.models import Attention

    model = Attention(8, 2, rope=False)
    specs = [GaugeSpec("head_rotation.norope", {"W_Q": "q.weight", "W_K": "k.weight"}, name="attn",
                       d_head=model.d_head)]
    binding = bind(model, specs, check=False)
    with pytest.raises(GaugeError, match=r"head_rotation.*q\.weight"):
        DDCAdamLogNorm(model.parameters(), binding=binding)


def test_overlapping_rescales_are_refused():
    """Pre-LN MLP: fc_in's columns carry the gain, its rows the unit rescale: single-entry blocks."""
    model = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))
    specs = [GaugeSpec("norm_scale.layernorm", {"gain": "0.weight", "bias": "0.bias", "W": "1.weight"}, name="ln"),
             GaugeSpec("relu_rescale.anchor", {"W_in": "1.weight", "b_in": "1.bias", "W_out": "3.weight"},
                       name="mlp")]
    binding = bind(model, specs, check=False)
    with pytest.raises(GaugeError, match=r"1\.weight is scaled by both") as err:
        DDCAdamLogNorm(model.parameters(), binding=binding)
    assert "ln" in str(err.value) and "mlp" in str(err.value)


def test_zero_block_is_refused():
    torch.manual_seed(0)
    model, specs, loss_fn, _, _, _ = relu_mlp()
    with torch.no_grad():
        model[2].weight[:, 3] = 0
    opt = DDCAdamLogNorm(model.parameters(), binding=bind(model, specs, check=False))
    loss_fn(model, torch.Generator().manual_seed(0)).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(GaugeError, match="unit 3 is exactly zero on 2.weight"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.state


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_overflowing_step_changes_nothing(nonfinite):
    """An update that overflows (exp of a huge log-norm step) is refused, or skipped, with parameters and
    state exactly as before, after a few good steps (state already written once)."""
    torch.manual_seed(0)
    model, specs, loss_fn, _, _, _ = relu_mlp()
    opt = DDCAdamLogNorm(model.parameters(), binding=bind(model, specs, check=False), lr=1e-2, nonfinite=nonfinite)
    data = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model, data).backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    loss_fn(model, data).backward()
    opt.param_groups[0]["lr"] = 1e6
    if nonfinite == "raise":
        with pytest.raises(GaugeError, match="overflows"):
            opt.step()
    else:
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    after = opt.state_dict()["state"]
    for k, st in state["state"].items():
        for key, value in st.items():
            assert torch.equal(value, after[k][key]), key


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    model, specs, loss_fn, _, _, bind_kw = norm_block("layernorm")
    twin = copy.deepcopy(model)
    kw = dict(lr=1e-2, weight_decay=0.1, vertical="adam")
    opt = DDCAdamLogNorm(model.parameters(), binding=bind(model, specs, check=False), **kw)
    data = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model, data).backward()
        opt.step()
    assert any(k.startswith("lognorm.radial.") for st in opt.state.values() for k in st)
    with torch.no_grad():
        for p, q in zip(twin.parameters(), model.parameters()):
            p.copy_(q)
    opt2 = DDCAdamLogNorm(twin.parameters(), binding=bind(twin, specs, check=False), **kw)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (twin, opt2)):
        gen = torch.Generator().manual_seed(9)
        o.zero_grad()
        loss_fn(m, gen).backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_triton_kernels_are_refused():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="no Triton kernels"):
        DDCAdamLogNorm(model.parameters(), kernels="triton")


def report() -> None:
    """The protocol table of docs/backends/lognorm.md: ``python -c "import sys; sys.path.insert(0, 'tests');
    import test_lognorm as t; t.report()"``."""
    cases = {**CASES, "stored_in_out": stored_in_out, "swiglu_signed": swiglu_signed}
    for name, case in cases.items():
        row = [max(protocol(case, d)) for d in (torch.float32, torch.float64)]
        row += [max(protocol(case, d, make_opt=adamw)) for d in (torch.float32, torch.float64)]
        print(f"{name:16s} lognorm fp32 {row[0]:.1e}  fp64 {row[1]:.1e}   AdamW fp32 {row[2]:.3f}  fp64 {row[3]:.3f}")
