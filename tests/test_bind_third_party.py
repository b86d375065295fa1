"""bind() on models nobody here wrote, judged by hand-written gauge transformations (tests/third_party.py).

For every case: the families found (by key and count), the refusals expected (tied heads, post-norm
residuals, non-homogeneous activations, an unproved composition), the loss unchanged under the
hand-written ``g`` (so ``transform`` really is a gauge: the oracle itself is checked), and the
ddc.md protocol in fp64 — run B from the hand-written ``g·θ`` on its own gradients — for DDCAdam
(below 1e-12) against AdamW (above 1e-6: the orbits move it).
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from gaugemath.backends.torch import DDCAdam, DDCMuon, GaugeSpec, TensorView, bind
from third_party import CASES, bind_case, example, protocol

from gaugemath.errors import GaugeError

IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def bindings():
    out = {}
    for case in CASES:
        model = case.make()
        out[case.name] = (model, bind_case(case, model))
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_families_found_and_refusals_named(case, bindings):
    _, binding = bindings[case.name]
    found = Counter(f.family.key for f in binding.families)
    assert dict(found) == case.expected, str(binding)
    reasons = "\n".join(str(r) for r in binding.refusals)
    for text in case.refused:
        assert text in reasons, reasons
    assert binding.checked.startswith("fp64"), str(binding)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hand_written_transformation_is_a_gauge(case):
    """The oracle first: the hand-written ``g`` leaves the loss unchanged (fp64, ``√ε``: see check.py)."""
    a = case.make()
    b = copy.deepcopy(a)
    case.transform(b, 3)
    for seed in range(2):
        args, kwargs = case.batch(seed)
        la, lb = case.loss(a, args, kwargs), case.loss(b, args, kwargs)
        assert abs(float(la - lb)) <= torch.finfo(torch.float64).eps ** 0.5 * abs(float(la)), case.name
    moved = sum(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))
    assert moved > 0.1  # and it moves the parameters


@pytest.mark.parametrize("case", [c for c in CASES if c.exact], ids=[c.name for c in CASES if c.exact])
def test_ddc_adam_is_equivariant_under_the_hand_written_gauge(case):
    def make(m):
        return DDCAdam(m.parameters(), binding=bind_case(case, m), lr=1e-2, weight_decay=0.1)

    dev = protocol(case, make)
    adamw = protocol(case, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1))
    assert dev < 1e-12, (case.name, dev, adamw)
    assert adamw > 1e-6, (case.name, adamw)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("llama", "gpt2 (untied)")], ids=lambda c: c.name)
def test_ddc_muon_is_equivariant_under_the_hand_written_gauge(case):
    def make(m):
        return DDCMuon(m.parameters(), binding=bind_case(case, m), lr=1e-2, adam_lr=1e-2)

    assert protocol(case, make, steps=4) < 1e-12


def test_per_family_frames_refuse_the_overlaps_the_balanced_frame_solves():
    """frames="per_family" (anchors): the ReLU rescale and the CE shift on one output layer do not compose
    (refused, named); the default balanced frame binds both (the MLP classifier case above)."""
    case = _case("nn.Sequential MLP classifier")
    model = case.make()
    binding = bind(model, example=example(case)[0], loss="cross_entropy", frames="per_family")
    assert Counter(f.family.key for f in binding.families) == {"relu_rescale.balance": 1}
    assert any("2.weight is also acted on" in str(r) for r in binding.refusals), str(binding)


# ----------------------------------------------------------------------------- explicit specs, checked
def _case(name):
    return next(c for c in CASES if c.name == name)


def test_wrong_rope_pairing_is_refused_with_the_measured_change():
    """HF pairs (j, j + d/2); binding its q/k as stored (interleaved (2j, 2j+1)) is not a gauge."""
    case = _case("llama")
    model = case.make()
    spec = GaugeSpec("head_rotation.rope", {"W_Q": "model.layers.0.self_attn.q_proj.weight",
                                            "W_K": "model.layers.0.self_attn.k_proj.weight"})
    with pytest.raises(GaugeError, match="head_rotation.*roles disagree"):  # GQA: 4 query heads, 2 key heads
        bind(model, [spec], example=example(case)[1])
    q = "model.layers.0.self_attn.q_proj.weight"  # query heads {0, 2} then {1, 3} read key heads 0, 1
    groups = [TensorView(q, rows=tuple(range(0, 8)) + tuple(range(16, 24))),
              TensorView(q, rows=tuple(range(8, 16)) + tuple(range(24, 32)))]
    spec = GaugeSpec("head_rotation.rope", {"W_Q": groups, "W_K": "model.layers.0.self_attn.k_proj.weight"})
    with pytest.raises(GaugeError, match="not a symmetry of this model: the loss changes by"):
        bind(model, [spec], example=example(case)[1])  # the GQA grouping is right, the pairing is not


def test_post_norm_gain_and_tied_shift_are_refused_explicitly():
    post = _case("nn.TransformerEncoderLayer (post-norm)")
    model = post.make()
    spec = GaugeSpec("norm_scale.layernorm", {"gain": "norm1.weight", "bias": "norm1.bias",
                                              "W": "linear1.weight"})
    with pytest.raises(GaugeError, match="norm_scale.*not a symmetry of this model"):
        bind(model, [spec], example=example(post)[0])
    tied = _case("gpt2 (tied)")
    model = tied.make()
    spec = GaugeSpec("ce_shift", {"W": "lm_head.weight"})
    with pytest.raises(GaugeError, match="ce_shift.*not a symmetry of this model"):
        bind(model, [spec], example=example(tied)[1])


def test_square_in_out_kernel_bound_as_out_in_is_refused_and_detected_transposed():
    """A square weight used as ``x @ W`` (a flax-style kernel): binding it as ``(out, in)`` is refused by
    the check; detection binds it transposed, and the hand-written rescale agrees."""

    class Kernel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.randn(5, 5, dtype=torch.float64))
            self.b1 = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
            self.w2 = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))

        def forward(self, x):
            return torch.relu(x @ self.w1 + self.b1) @ self.w2

    model = Kernel()
    x = torch.randn(4, 5, dtype=torch.float64)
    wrong = GaugeSpec("relu_rescale.anchor", {"W_in": "w1", "b_in": "b1", "W_out": TensorView("w2", transpose=True)})
    with pytest.raises(GaugeError, match="not a symmetry of this model"):
        bind(model, [wrong], example=(x,))
    found = bind(model, example=(x,))
    assert [f.family.key for f in found.families] == ["relu_rescale.balance"], str(found)
    assert found.layout.transpose == (True, False, True)
    s = torch.exp(torch.randn(5, dtype=torch.float64))
    moved = copy.deepcopy(model)
    with torch.no_grad():  # by hand: column k of w1 and b1[k] times s_k, row k of w2 over s_k
        moved.w1.mul_(s[None, :])
        moved.b1.mul_(s)
        moved.w2.div_(s[:, None])
    assert torch.allclose(model(x), moved(x), rtol=1e-12, atol=1e-12)


def test_mlp_classifier_overlap_is_refused_per_family_and_bound_exactly_balanced():
    case = _case("nn.Sequential MLP classifier")
    model = case.make()
    specs = [GaugeSpec("relu_rescale.anchor", {"W_in": "0.weight", "b_in": "0.bias", "W_out": "2.weight"}),
             GaugeSpec("ce_shift", {"W": "2.weight", "b": "2.bias"})]
    with pytest.raises(GaugeError, match="composite frame of relu_rescale.anchor .cols. and ce_shift .cols. "
                                         "on one tensor is not proved"):
        bind(model, specs, example=example(case)[0], loss="cross_entropy", frames="per_family")
    binding = bind(model, specs, example=example(case)[0], loss="cross_entropy")  # checked on the model
    assert len(binding.families) == 3 and "canonical points agree" in binding.checked


# ----------------------------------------------------------------------------- wrappers and conventions
def test_wrappers_keep_every_family():
    case = _case("llama")
    model = case.make()
    ids = example(case)[1]["input_ids"]
    plain = bind(model, example=(ids,), loss="cross_entropy")
    assert len(plain.families) == 10
    for wrapped, prefix in ((torch.compile(model), "_orig_mod."), (torch.nn.DataParallel(model), "module."),
                            (torch.nn.Sequential(model), "0.")):
        b = bind(wrapped, example=(ids,), loss="cross_entropy")
        assert [f.family.key for f in b.families] == [f.family.key for f in plain.families]
        assert all(n.startswith(prefix) for n, _ in b.params)
        assert [p for _, p in b.params] == [p for _, p in plain.params]


def test_frozen_tensors_exclude_only_the_families_they_touch():
    case = _case("llama")
    model = case.make()
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)
    b = bind_case(case, model)
    keys = Counter(f.family.key for f in b.families)
    assert keys["swiglu_rescale.anchor"] == 1 and keys["norm_scale.rmsnorm"] == 5
    assert any("frozen" in r.reason for r in b.refusals)


def test_report_lists_fraction_and_refusals():
    case = _case("gpt2 (tied)")
    text = str(bind_case(case, case.make()))
    assert "parameter entries" in text and "%" in text
    assert "refused: ce_shift refused" in text and "checked: fp64" in text


def test_nanogpt_param_groups_decay_split_is_equivariant():
    """nanoGPT's configure_optimizers: 2-D tensors decay, 1-D ones do not; one gauge spans both groups
    (ln_1's gain and bias in the no-decay group, c_attn's weight in the decay group)."""
    case = _case("nanoGPT (flash)")

    def make(m):
        decay = [p for p in m.parameters() if p.dim() >= 2]
        no_decay = [p for p in m.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        return DDCAdam(groups, binding=bind_case(case, m), lr=1e-2)

    dev = protocol(case, make)
    adamw = protocol(case, lambda m: torch.optim.AdamW(
        [{"params": [p for p in m.parameters() if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in m.parameters() if p.dim() < 2], "weight_decay": 0.0}], lr=1e-2))
    assert dev < 1e-12 and adamw > 1e-6, (dev, adamw)
    model = case.make()
    binding = bind_case(case, model)
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "lr": 1e-2},
              {"params": [p for p in model.parameters() if p.dim() < 2], "lr": 1e-3}]
    with pytest.raises(GaugeError, match="param groups 0 and 1 with different lr"):
        DDCAdam(groups, binding=binding)
    with pytest.raises(GaugeError, match="different weight_decay"):
        DDCMuon([{"params": groups[0]["params"], "weight_decay": 0.1},
                 {"params": groups[1]["params"], "weight_decay": 0.0}], binding=binding)


class GemmaNorm(torch.nn.Module):
    """Gemma's RMSNorm (re-typed): the gain enters as ``(1 + w)``."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, x):
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return out * (1.0 + self.weight.float()).to(x.dtype)


def test_affine_gain_is_refused_by_name():
    model = torch.nn.Sequential(GemmaNorm(6), torch.nn.Linear(6, 3, dtype=torch.float64))
    binding = bind(model, example=(torch.randn(4, 6, dtype=torch.float64),))
    assert not binding.families
    assert any(r.where == "0.weight" and "(c + w)" in r.reason for r in binding.refusals), binding.refusals


def test_binding_check_is_public_and_catches_an_edited_model():
    case = _case("nanoGPT (flash)")
    model = case.make()
    binding = bind_case(case, model)
    assert binding.check(model, example(case)[0], loss=lambda out: out[1]).startswith("fp64")
    blk = model.transformer.h[0]
    blk.ln_1.forward = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:], blk.ln_1.weight, blk.ln_1.bias) + x
    with pytest.raises(GaugeError, match="norm_scale.*not a symmetry of this model"):
        binding.check(model, example(case)[0], loss=lambda out: out[1])
