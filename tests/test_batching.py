"""Layer batching of the torch backend (``backends/torch/batching.py``): schedule, layout, and the
step it runs, which must be the per-family step (bit for bit for DDCAdam)."""

from __future__ import annotations

import copy

import pytest
import torch
from gaugemath.backends.torch import DDCAdam, DDCMuon, batching, bind
from gaugemath.backends.torch.binding import reindexed

from gaugemath.models import tiny_gpt

VARIANTS = {
    "layernorm_relu_rope": dict(norm="layernorm", mlp="relu"),
    "rmsnorm_swiglu_heads": dict(rope=False, max_len=16),
    "three_layers": dict(n_layers=3),
}


def _families(model):
    binding = bind(model)
    return binding, binding.families, [tuple(p.shape) for _, p in binding.params]


def _tensors(fam) -> set[int]:
    return {i for idx in fam.roles.values() for i in idx}


@pytest.mark.parametrize("variant", VARIANTS)
def test_schedule_merges_layers_and_keeps_the_order_of_families_that_share_a_tensor(variant):
    _, fams, shapes = _families(tiny_gpt(**VARIANTS[variant]))
    groups = batching.schedule(fams, shapes)
    assert sorted(f for g in groups for f in g) == list(range(len(fams)))  # a permutation
    where = {f: b for b, g in enumerate(groups) for f in g}
    for f in range(len(fams)):
        for g in range(f + 1, len(fams)):
            if _tensors(fams[f]) & _tensors(fams[g]):
                assert where[f] < where[g], (fams[f].name, fams[g].name)
    for g in groups:  # one batch: one generated family, disjoint tensors, never matrix-valued if merged
        assert len({fams[f].family.key for f in g}) == 1
        assert sum(len(_tensors(fams[f])) for f in g) == len(set().union(*(_tensors(fams[f]) for f in g)))
        assert len(g) == 1 or fams[g[0]].kind != "head"
    assert len(groups) < len(fams)  # something was merged


def test_layout_stacks_are_views_of_the_tensors():
    """Writing through a tensor's view shows in the stacked views of every batch that uses it."""
    _, fams, shapes = _families(tiny_gpt(norm="layernorm", mlp="relu", n_layers=3))
    batches, layout = batching.plan(fams, shapes)
    flat, views = layout.buffer([torch.zeros(s, dtype=torch.float64) for s in shapes], torch.float64)
    assert flat.numel() == sum(v.numel() for v in views[: len(shapes)])
    for b in batches:
        if b.layers == 1:
            continue
        for role, idx in b.family.roles.items():
            for slot, j in enumerate(idx):
                for layer, f in enumerate(b.members):
                    i = fams[f].roles[role][slot]
                    views[i].fill_(layer + 1.0)
                    assert torch.all(views[j].reshape(b.layers, -1)[layer] == layer + 1.0), (b.family.name, role)


def test_a_batch_whose_stacks_clash_falls_back_to_single_families():
    """ReLU families X on tensors (0,1,2), Y on (3,4,5) batch as [X, Y]; Z1 on (3,4,5) and Z2 on (0,7,8) share
    tensors with that batch, so they form a second one, which would stack tensor 3 with 0 in the other
    order: it falls back to single families."""
    _, fams, shapes = _families(tiny_gpt(norm="layernorm", mlp="relu", n_layers=3))
    relu = [f for f in fams if f.family.key.startswith("relu")]
    r = relu[0]
    base = [i for idx in r.roles.values() for i in idx]  # W_in, b_in, W_out of layer 0

    def on(new):
        return reindexed(r, dict(zip(base, new)))

    synthetic = [on([0, 1, 2]), on([3, 4, 5]), on([3, 4, 5]), on([0, 7, 8])]
    syn_shapes = [shapes[i] for i in base] * 3
    batches, _ = batching.plan(synthetic, syn_shapes)
    assert [b.members for b in batches] == [[0, 1], [2], [3]]


def _run(cls, variant, vertical, batched, steps=3):
    torch.manual_seed(0)
    model = tiny_gpt(**VARIANTS[variant]).double()
    opt = cls(model.parameters(), binding=bind(model), lr=1e-2, vertical=vertical)
    opt._batch_layers = batched
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, 11, (2, 7), generator=gen)
        opt.zero_grad()
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("vertical", ["freeze", "sgd", "adam"])
def test_batched_ddcadam_is_the_per_family_step_bit_for_bit(variant, vertical):
    a, opt = _run(DDCAdam, variant, vertical, batched=True)
    b, _ = _run(DDCAdam, variant, vertical, batched=False)
    assert len(opt._plans[0]["batches"][0]) < len(opt._plans[0]["families"])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_ddcmuon_is_the_per_family_step(variant):
    """Newton–Schulz products on buffer views may round differently (BLAS paths): 1e-12, fp64."""
    a, _ = _run(DDCMuon, variant, "freeze", batched=True)
    b, _ = _run(DDCMuon, variant, "freeze", batched=False)
    worst = max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-300)) for x, y in zip(a, b))
    assert worst < 1e-12, worst


def test_degenerate_orbit_in_a_batch_is_stepped_like_the_single_families():
    """A zero unit in layer 1's ReLU block (a normal state of training: weight decay drives rescale-symmetric
    units there): identity frame and no vertical space for that unit, in the batched step as in the
    single-family one (equal to 1e-12), the zero unit stays exactly zero, the rest moves."""
    torch.manual_seed(0)
    model = tiny_gpt(norm="layernorm", mlp="relu").double()
    with torch.no_grad():
        model.blocks[1].mlp.fc_in.weight[3].zero_()
        model.blocks[1].mlp.fc_in.bias[3] = 0.0
        model.blocks[1].mlp.fc_out.weight[:, 3].zero_()
    runs = []
    for batched in (True, False):
        m = copy.deepcopy(model)
        opt = DDCAdam(m.parameters(), binding=bind(m), lr=1e-2, weight_decay=0.1)
        opt._batch_layers = batched
        opt._plans = opt._plan()
        for step in range(3):
            idx = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            m.loss(idx[:, :-1], idx[:, 1:]).backward()
            opt.step()
        runs.append(m)
    a, b = (dict(r.named_parameters()) for r in runs)
    assert all(torch.isfinite(p).all() for p in a.values())
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-12
    assert float(a["blocks.1.mlp.fc_in.weight"][3].abs().max()) == 0.0
    assert float(a["blocks.1.mlp.fc_out.weight"][:, 3].abs().max()) == 0.0
    assert not torch.equal(a["blocks.1.mlp.fc_in.weight"], model.blocks[1].mlp.fc_in.weight)


def test_batching_leaves_models_without_repeated_layers_alone():
    model = copy.deepcopy(tiny_gpt(n_layers=1))
    _, fams, shapes = _families(model)
    batches, layout = batching.plan(fams, shapes)
    assert all(b.layers == 1 for b in batches) and not layout.stacks
