"""Rank collapse under rotation symmetry (seed 002 Thm 2, Eq. 51; gaugemath.rank_collapse), on models nobody here
wrote (the re-typed nanoGPT: O(d_head) per head, fused ``c_attn``; HF Llama: RoPE planes, grouped KV), judged by
hand-written projections of the heads' rows and the models' own forward and backward passes."""

from __future__ import annotations

import copy

import pytest
import torch
from gaugemath.backends.torch import DDCAdam
from third_party import CASES, bind_case, rotate_rows

from gaugemath.rank_collapse import collapsed, rank_spectra, rank_thresholds

N_EMBD, N_HEAD = 16, 2
DH = N_EMBD // N_HEAD


def _nano():
    case = next(c for c in CASES if c.name == "nanoGPT (flash)")
    model = case.make()
    args, kwargs = case.batch(0)
    return case, model, (lambda m: case.loss(m, args, kwargs))


def _head_rows(block, h: int) -> list[list[int]]:
    """nanoGPT ``c_attn`` rows of head ``h``: its query rows, then its key rows (``q | k | v`` stacked)."""
    return [list(range(base + h * DH, base + (h + 1) * DH)) for base in (0, N_EMBD)]


def _head_matrix(block, h: int) -> torch.Tensor:
    """``M_h = [W_Q,h | b_Q,h | W_K,h | b_K,h]``, ``d_head × (2 d + 2)``, read off ``c_attn`` by hand."""
    w, b = block.attn.c_attn.weight.detach(), block.attn.c_attn.bias.detach()
    return torch.cat([torch.cat([w[r], b[r][:, None]], dim=1) for r in _head_rows(block, h)], dim=1)


def _project(block, h: int, n: torch.Tensor) -> None:
    """``M_h ← (I − n nᵀ) M_h`` on the query and key rows (weights and biases) of head ``h``, by hand."""
    p = torch.eye(DH, dtype=n.dtype) - torch.outer(n, n)
    with torch.no_grad():
        for rows in _head_rows(block, h):
            rotate_rows(block.attn.c_attn.weight, rows, p)
            rotate_rows(block.attn.c_attn.bias, rows, p)


def _grad_matrix(block, h: int) -> torch.Tensor:
    g, gb = block.attn.c_attn.weight.grad, block.attn.c_attn.bias.grad
    return torch.cat([torch.cat([g[r], gb[r][:, None]], dim=1) for r in _head_rows(block, h)], dim=1)


def _decayed_backward(model, loss, gamma: float) -> None:
    model.zero_grad()
    (loss(model) + gamma * sum((p * p).sum() for p in model.parameters())).backward()


def test_a_lost_direction_gets_no_gradient_and_gd_never_regains_it():
    """[Y] Thm 2.1 on nanoGPT: with ``nᵀ M_h = 0`` the gradient of ``ℓ₀ + γ‖θ‖²`` has ``nᵀ ∇M_h = 0`` (fp64: the
    exact value is 0 and each entry of ``nᵀ∇`` sums 8 rounded products, so ``1e-12·‖∇M_h‖`` is ~10³ ε of margin),
    while the same ``n`` on the unprojected model has a gradient. GD with coupled decay then keeps ``nᵀ M_h = 0``
    over 20 steps (to the same bound), and AdamW does not (its per-coordinate step is not rotation-equivariant)."""
    case, model, loss = _nano()
    binding = bind_case(case, model)  # (bound at a full-rank point: bind's frame check refuses a degenerate head)
    block = model.transformer.h[0]
    n = torch.randn(DH, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    n = n / n.norm()
    _decayed_backward(model, loss, 0.1)
    g = _grad_matrix(block, 1)
    assert float((n @ g).norm()) > 1e-3 * float(g.norm())  # the control: a direction that is not lost moves

    _project(block, 1, n)
    assert float((n @ _head_matrix(block, 1)).norm()) <= 1e-15
    _decayed_backward(model, loss, 0.1)
    g = _grad_matrix(block, 1)
    assert float((n @ g).norm()) <= 1e-12 * float(g.norm())

    fam = next(f for f in binding.families if f.kind == "head" and ".h.0." in f.name + ".")
    sv = rank_spectra(binding)[fam.name]
    assert float(sv[1, -1]) <= 1e-14 * float(sv[1, 0]) and float(sv[0, -1]) > 1e-3 * float(sv[0, 0])
    assert collapsed(binding)[fam.name].tolist() == [0, 1]
    gam = rank_thresholds(model, binding, torch.no_grad()(loss))[fam.name]
    assert torch.isinf(gam[1]) and bool(torch.isfinite(gam[0]))  # at the symmetric point to round-off: nothing to drop

    for name, make in (("gd", lambda m: torch.optim.SGD(m.parameters(), lr=0.05)),
                       ("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0))):
        m = copy.deepcopy(model)
        opt = make(m)
        for t in range(20):
            args, kwargs = case.batch(100 + t)
            m.zero_grad()
            (case.loss(m, args, kwargs) + 0.1 * sum((p * p).sum() for p in m.parameters())).backward()
            opt.step()
        lost = float((n @ _head_matrix(m.transformer.h[0], 1)).norm())
        scale = float(_head_matrix(m.transformer.h[0], 1).norm())
        if name == "gd":
            assert lost <= 1e-12 * scale
        else:
            assert lost > 1e-4 * scale


def test_eq51_threshold_against_a_hand_projection():
    """[Y] Eq. 51 per head of nanoGPT: ``γ_n = (ℓ₀((I − n nᵀ) θ) − ℓ₀(θ)) / σ_min²`` with ``n`` the smallest left
    singular vector of ``M_h`` — recomputed here from ``c_attn`` by hand and the model's own loss (fp64, 1e-9: two
    forward passes' rounding divided by ``σ_min²``); and the energetic claim: at ``1.01 γ_n`` the projected model has
    the lower ``ℓ₀ + γ‖θ‖²``, at ``0.99 γ_n`` the higher."""
    case, model, loss0 = _nano()
    loss = torch.no_grad()(loss0)
    binding = bind_case(case, model)
    got = rank_thresholds(model, binding, loss)
    base, checked = float(loss(model)), 0
    for layer, block in enumerate(model.transformer.h):
        fam = next(f for f in binding.families if f.kind == "head" and f".h.{layer}." in f.name + ".")
        for h in range(N_HEAD):
            u, s, _ = torch.linalg.svd(_head_matrix(block, h))
            n, mass = u[:, -1], float(s[-1]) ** 2
            m = copy.deepcopy(model)
            _project(m.transformer.h[layer], h, n)
            raw = (float(loss(m)) - base) / mass
            gam = max(0.0, raw)  # < 0: losing the direction lowers ℓ₀ itself (at this random init, 1 of 4 heads)
            assert float(got[fam.name][h]) == pytest.approx(gam, rel=1e-9, abs=0.0)
            checked += raw > 0
            sq = lambda mod: sum(float((p.detach() ** 2).sum()) for p in mod.parameters())  # noqa: E731
            assert sq(model) - sq(m) == pytest.approx(mass, rel=1e-9)
            for factor, better in ((1.01, True), (0.99, False)) if raw > 0 else ():
                g = factor * gam
                assert (float(loss(m)) + g * sq(m) < base + g * sq(model)) is better
    assert checked >= 2
    assert all(p.grad is None for p in model.parameters())
    assert float(loss(model)) == base  # restored exactly


def test_rope_planes_collapse_as_whole_planes_on_hf_llama():
    """HF Llama (RoPE, 4 query heads on 2 KV heads): the stationary set of SO(2) is a whole plane. Zeroing plane
    ``(p, p + d_head/2)`` of KV head 0 by hand (its key rows and the query rows of the two heads that read it) is the
    one plane :func:`collapsed` reports (unit 1); and the per-plane thresholds equal the hand-computed cost of
    zeroing each plane, unit by unit (1e-9, as above)."""
    case = next(c for c in CASES if c.name == "llama")
    model = case.make()
    args, kwargs = case.batch(0)
    loss = torch.no_grad()(lambda m: case.loss(m, args, kwargs))
    heads, kv, d = 4, 2, 32
    dh, group = d // heads, heads // kv

    def plane_rows(att, j, p):
        rows = [j * dh + p, j * dh + p + dh // 2]
        out = [(att.k_proj.weight, [rows])]
        out.append((att.q_proj.weight, [[h * dh + p, h * dh + p + dh // 2] for h in range(j * group, (j + 1) * group)]))
        return out

    def zero_plane(m, j, p):
        with torch.no_grad():
            for w, rowsets in plane_rows(m.model.layers[0].self_attn, j, p):
                for rows in rowsets:
                    w[rows] = 0.0

    base = float(loss(model))
    hand = []
    att = model.model.layers[0].self_attn
    for j in range(kv):
        for p in range(dh // 2):
            mass = sum(float((w.detach()[rows] ** 2).sum()) for w, rs in plane_rows(att, j, p) for rows in rs)
            m = copy.deepcopy(model)
            zero_plane(m, j, p)
            hand.append(max(0.0, (float(loss(m)) - base) / mass))
    binding = bind_case(case, model)
    fam = next(f for f in binding.families if f.kind == "plane" and "layers.0." in f.name + ".")
    got = rank_thresholds(model, binding, loss)[fam.name]
    assert got.tolist() == pytest.approx(hand, rel=1e-9)  # units: KV head j, plane p at j·d_head/2 + p

    zero_plane(model, 0, 1)
    flags = collapsed(binding)[fam.name]
    assert flags.nonzero().flatten().tolist() == [1]
    assert torch.isinf(rank_thresholds(model, binding, loss)[fam.name][flags]).all()


@pytest.mark.parametrize("optimizer", ["adamw", "ddcadam"])
def test_adaptive_steps_leave_the_rank_deficient_set(optimizer):
    """The flip side of Thm 2.1, measured: the lost direction is only stationary for updates that commute with the
    mirror. AdamW's and DDCAdam's are not (DDCAdam's frame is undefined on a rank-deficient head and takes the
    identity there, so that head gets a plain Adam step), and both bring ``nᵀ M_h`` back above ``1e-4 ‖M_h‖``
    within 20 steps; GD's stays at round-off (test above)."""
    case, model, loss = _nano()
    n = torch.zeros(DH, dtype=torch.float64)
    n[:2] = torch.tensor([0.6, 0.8], dtype=torch.float64)  # not a coordinate axis
    binding = bind_case(case, model)
    _project(model.transformer.h[0], 1, n)
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1) if optimizer == "adamw"
           else DDCAdam(model.parameters(), binding=binding, lr=1e-3, weight_decay=0.1))
    for t in range(20):
        args, kwargs = case.batch(100 + t)
        opt.zero_grad()
        case.loss(model, args, kwargs).backward()
        opt.step()
    m = _head_matrix(model.transformer.h[0], 1)
    assert float((n @ m).norm()) > 1e-4 * float(m.norm())


def test_bind_refuses_only_the_rank_deficient_heads_and_names_the_unit():
    """A model that has already lost a head direction (a trained model under decay can): bind() cannot check the
    head frame there (undefined on a rank-deficient head, which the rotation does not fix), so it refuses that
    layer's head rotation, naming the unit, and binds the other layer's — the composite check blames the family
    whose addition breaks it, not the last one."""
    case, model, _ = _nano()
    _project(model.transformer.h[0], 1, torch.tensor([1.0] + [0.0] * (DH - 1), dtype=torch.float64))
    binding = bind_case(case, model)
    heads = [f.name for f in binding.families if f.kind == "head"]
    assert heads == ["transformer.h.1.attn.c_attn"]
    refused = [r for r in binding.refusals if r.gauge == "head_rotation"]
    assert [r.where for r in refused] == ["transformer.h.0.attn.c_attn"]
    assert "units [1] are degenerate" in refused[0].reason
