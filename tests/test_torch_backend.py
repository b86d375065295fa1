"""The torch backend against the symbolic core, against torch.optim.AdamW, and on bad input."""

from __future__ import annotations

import copy

import mpmath
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gaugemath.backends.torch import DDCAdam, GaugeSpec, bind  # noqa: E402
from gaugemath.backends.torch.projection import Projector  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import gaugemath.verify as V  # noqa: E402
from gaugemath import GaugeError, catalogue  # noqa: E402
from gaugemath.models import GPT, MLP, tiny_gpt  # noqa: E402
from gaugemath.numeric import NumericGauge  # noqa: E402

CONSTRUCTIONS = {c.name: c for c in V._constructions()}


class Blocks(nn.Module):
    """Parameters named like the symbolic core's blocks (``.`` → ``_``)."""

    def __init__(self, values: dict[str, np.ndarray]):
        super().__init__()
        for name, v in values.items():
            self.register_parameter(name.replace(".", "_"), nn.Parameter(torch.tensor(v, dtype=torch.float64)))


def _core_case(name):
    """(core gauge, explicit specs in core block names, θ with well-separated anchor columns)."""
    if name == "relu":
        g = catalogue.relu_rescale(3, 4, 2)
        specs = [GaugeSpec("relu_rescale.balance", {"W_in": "W_in", "b_in": "b_in", "W_out": "W_out"})]
    elif name == "swiglu":
        g = catalogue.swiglu_rescale(3, 2, 3, frame="anchor")
        specs = [GaugeSpec("swiglu_rescale.anchor", {"W_up": "W_up", "W_down": "W_down"})]
    elif name == "layernorm":
        g = catalogue.norm_gain("layernorm", 3, 2)
        specs = [GaugeSpec("norm_scale.layernorm", {"gain": "gain", "bias": "bias", "W": "W"})]
    elif name == "producer":
        g = catalogue.norm_producer("layernorm", d=3)
        specs = [GaugeSpec("norm_scale.producer", {"W_p": "W_p", "b_p": "b_p"})]
    elif name == "shift":
        g = catalogue.ce_shift(4, 3)
        specs = [GaugeSpec("ce_shift", {"W": "W", "b": "b"})]
    elif name == "rope":
        g = catalogue.head_rotation(True, d_model=3, d_head=4, positions=2)
        specs = [GaugeSpec("head_rotation.rope", {"W_Q": "W_Q", "W_K": "W_K"})]
    elif name == "norope":
        g = catalogue.head_rotation(False, d_model=3, d_head=3)
        specs = [GaugeSpec("head_rotation.norope", {"W_Q": "W_Q", "W_K": "W_K"}, d_head=3)]
    else:
        g = catalogue.transformer_block("swiglu", "rmsnorm")
        specs = [
            GaugeSpec("norm_scale.rmsnorm", {"gain": "ln1_gain", "W": ["attn_W_Q", "attn_W_K", "attn_W_V"]}),
            GaugeSpec("norm_scale.rmsnorm", {"gain": "ln2_gain", "W": ["mlp_W_gate", "mlp_W_up"]}),
            GaugeSpec("norm_scale.rmsnorm", {"gain": "lnf_gain", "W": ["head_W"]}),
            GaugeSpec("head_rotation.rope", {"W_Q": "attn_W_Q", "W_K": "attn_W_K"}),
            GaugeSpec("swiglu_rescale.anchor", {"W_up": "mlp_W_up", "W_down": "mlp_W_down"}),
            GaugeSpec("ce_shift", {"W": "head_W", "b": "head_b"}),
        ]
    return NumericGauge(g), specs


def _theta(num: NumericGauge, seed: int, separated: bool) -> dict[str, np.ndarray]:
    """Random blocks; ``separated``: column norms decrease fast, so pivoting picks columns in order."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, m in num.gauge.blocks.items():
        v = rng.normal(size=(m.rows, m.cols))
        if separated and name.endswith(("W_Q", "W_K")):
            v = v * (100.0 ** -np.arange(m.cols))[None, :]
            if name.endswith("W_K"):
                v = v * 1e-6
        if separated and name.endswith("gain"):  # keep the gains from reordering W_Q's columns
            v = 1 + 0.1 * v
        out[name] = v if m.cols > 1 else v[:, 0]
    return out


def _bound(num, specs, values):
    model = Blocks(values)
    # catalogue blocks: no forward pass; the symbolic core's frames (each family's own, in binding order)
    binding = bind(model, specs, check=False, frames="per_family")
    tensors = {n: p for n, p in binding.params}
    return model, binding, tensors


CORE_CASES = ["relu", "swiglu", "layernorm", "producer", "shift", "rope", "norope", "block"]


@pytest.mark.parametrize("case", CORE_CASES)
def test_generated_frame_and_projector_equal_the_derived_ones(case):
    """Runtime canonical point and vertical projector = the symbolic core's, evaluated in float64."""
    num, specs = _core_case(case)
    values = _theta(num, 7, separated=True)
    model, binding, tensors = _bound(num, specs, values)
    core_names = {n.replace(".", "_"): n for n in num.gauge.blocks}
    theta = [p.detach().clone() for _, p in binding.params]
    for fam in binding.families:
        fam.act(fam.frame(theta), theta)
    expected = num.unflatten(num.canonical(num.flatten(values)))
    for (name, _), t in zip(binding.params, theta):
        np.testing.assert_allclose(t.numpy().reshape(-1), np.ravel(expected[core_names[name]]), rtol=1e-9, atol=1e-9)
    # P_V at the canonical point, applied to random vectors, against the derived projector matrix
    flat_tilde = num.flatten(expected)
    pv = np.asarray(num.vertical_projector(flat_tilde), dtype=float)
    proj = Projector(binding.families, [n for n, _ in binding.params])
    fact = proj.factor(theta)
    rng = np.random.default_rng(3)
    for _ in range(3):
        u_flat = rng.normal(size=num.n)
        u_blocks = num.unflatten(u_flat)
        u = [torch.tensor(np.reshape(u_blocks[core_names[n]], tuple(p.shape))) for n, p in binding.params]
        coef = proj.solve(fact, [fam.coords(theta, u)[..., None] for fam in binding.families])
        out = [torch.zeros_like(t) for t in theta]
        for fam, c in zip(binding.families, coef):
            fam.lift(c[..., 0], theta, out)
        got = {core_names[n]: o.numpy() for (n, _), o in zip(binding.params, out)}
        # blocks not bound in torch (none here) would be zero
        np.testing.assert_allclose(num.flatten(got), pv @ u_flat, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", ["relu", "layernorm", "shift"])
def test_fp64_steps_match_an_mpmath_reference_of_the_update(case):
    """Five DDCAdam steps (fp64) = the same update computed from the derived formulas at 50 digits."""
    num, specs = _core_case(case)
    mp = NumericGauge(num.gauge, backend="mpmath")
    values = _theta(num, 11, separated=False)
    model, binding, tensors = _bound(num, specs, values)
    core_names = {n.replace(".", "_"): n for n in num.gauge.blocks}
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.999), 1e-8, 0.1
    opt = DDCAdam([p for _, p in binding.params], binding=binding, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    rng = np.random.default_rng(5)
    with mpmath.workdps(50):
        theta = np.array([mpmath.mpf(float(x)) for x in num.flatten(values)], dtype=object)
        m = np.array([mpmath.mpf(0)] * num.n, dtype=object)
        v = np.array([mpmath.mpf(0)] * num.n, dtype=object)
        for t in range(1, 6):
            g = rng.normal(size=num.n)  # a generic covector: its vertical part is real
            g_blocks = num.unflatten(g)
            for n, p in binding.params:
                p.grad = torch.tensor(np.reshape(g_blocks[core_names[n]], tuple(p.shape)))
            opt.step()
            tilde = mp.canonical(theta)
            d = np.array([mpmath.sqrt(x) for x in np.diag(mp.metric(theta))], dtype=object)  # D(h) diagonal
            gt = np.array([mpmath.mpf(float(x)) for x in g], dtype=object) / d
            pv = mp.vertical_projector(tilde)
            gh = gt - pv @ gt
            m = b1 * m + (1 - b1) * gh
            v = b2 * v + (1 - b2) * gh * gh
            u = (m / (1 - b1**t)) / (np.array([mpmath.sqrt(x) for x in v], dtype=object) / mpmath.sqrt(1 - b2**t)
                                     + eps)
            w = u + wd * tilde
            x = tilde - lr * (w - pv @ w)
            theta = (x - tilde) / d + theta  # h⁻¹·x for x ↦ D x + c (scale: D⁻¹x; shift: x − (θ̃ − θ))
            got = num.flatten({core_names[n]: p.detach().numpy() for n, p in binding.params})
            ref = np.array([float(e) for e in theta])
            assert np.max(np.abs(got - ref)) <= 1e-12 * max(1.0, np.max(np.abs(ref))), (t, got - ref)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("name", sorted(CONSTRUCTIONS))
def test_verify_protocol_passes_and_adamw_control_fails(name, dtype, tol):
    assert V.run_protocol(CONSTRUCTIONS[name], "ddc_adam", dtype, steps=20) < tol
    if dtype == "float64":
        assert V.run_protocol(CONSTRUCTIONS[name], "adamw", dtype, steps=20) > 1e-3


@settings(max_examples=6, deadline=None)
@given(name=st.sampled_from(sorted(CONSTRUCTIONS)), seed=st.integers(0, 10_000),
       vertical=st.sampled_from(["freeze", "sgd", "adam"]), dtype=st.sampled_from(["float32", "float64"]))
def test_equivariance_random_seeds_elements_policies(name, seed, vertical, dtype):
    dev = V.run_protocol(CONSTRUCTIONS[name], "ddc_adam", dtype, steps=10, seed=seed, vertical=vertical)
    assert dev < V.THRESHOLDS[dtype], (name, seed, vertical, dtype, dev)


def _train(model, opt, steps, seed=0, scheduler=None):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, model.vocab, (4, 9), generator=gen)

        def closure(idx=idx):
            opt.zero_grad()
            loss = model.loss(idx[:, :-1], idx[:, 1:])
            loss.backward()
            return loss

        opt.step(closure)
        if scheduler is not None:
            scheduler.step()


def test_no_gauges_is_adamw_over_100_steps():
    torch.manual_seed(0)
    a = tiny_gpt()
    b = copy.deepcopy(a)
    groups = lambda m: [  # noqa: E731 - two groups: schedulers and per-group hyper-parameters
        {"params": [p for n, p in m.named_parameters() if "blocks" in n], "lr": 3e-3},
        {"params": [p for n, p in m.named_parameters() if "blocks" not in n], "weight_decay": 0.0},
    ]
    oa = DDCAdam(groups(a), lr=1e-2, weight_decay=0.05)
    ob = torch.optim.AdamW(groups(b), lr=1e-2, weight_decay=0.05, foreach=True)
    sa = torch.optim.lr_scheduler.CosineAnnealingLR(oa, T_max=100)
    sb = torch.optim.lr_scheduler.CosineAnnealingLR(ob, T_max=100)
    _train(a, oa, 100, scheduler=sa)
    _train(b, ob, 100, scheduler=sb)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), n


def test_state_dict_resume_is_bit_identical():
    torch.manual_seed(1)
    model = tiny_gpt()
    opt = DDCAdam(model.parameters(), binding=bind(model), lr=1e-2, vertical="adam")
    _train(model, opt, 5)
    snapshot, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 5, seed=9)
    resumed = tiny_gpt()
    resumed.load_state_dict(snapshot)
    opt2 = DDCAdam(resumed.parameters(), binding=bind(resumed), lr=1e-2, vertical="adam")
    opt2.load_state_dict(state)
    _train(resumed, opt2, 5, seed=9)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bf16_parameters_keep_fp32_state_and_train():
    torch.manual_seed(2)
    model = tiny_gpt().to(torch.bfloat16)
    opt = DDCAdam(model.parameters(), binding=bind(model), lr=1e-2)
    idx = torch.randint(0, 11, (4, 9))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
    assert losses[-1] < losses[0] - 0.3


def test_freeze_never_turns_roundoff_into_a_step():
    """Invariant loss, vertical='adam': the round-off vertical gradient is zeroed, so the step is
    identical to vertical='freeze' (ddc.md §3 pitfall)."""
    torch.manual_seed(3)
    a = MLP(4, 8, 3)
    b = copy.deepcopy(a)
    oa = DDCAdam(a.parameters(), binding=bind(a), lr=1e-2, vertical="adam")
    ob = DDCAdam(b.parameters(), binding=bind(b), lr=1e-2, vertical="freeze")
    x, y = torch.randn(32, 4), torch.randn(32, 3)
    for m, o in ((a, oa), (b, ob)):
        for _ in range(20):
            o.zero_grad()
            (m(x) - y).pow(2).mean().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_coupled_solve_by_conjugate_gradients_equals_the_factored_schur_complement(monkeypatch):
    """Coupled scale families (SwiGLU unit × RMSNorm gain on ``W_up``/``W_gate``, one degenerate unit) are solved
    in eager mode by preconditioned CG on the Schur complement, by a Cholesky factorisation of the formed
    complement under torch.compile, and by that factorisation when CG does not converge: the three agree to
    fp64 round-off (CG stops at a 16 ε relative residual; amplified by cond(Γ), ≤ 1e2 here: 1e-12)."""
    import gaugemath.backends.torch.projection as projection

    torch.manual_seed(2)
    model = tiny_gpt().double()
    binding = bind(model)
    with torch.no_grad():  # (after binding) a SwiGLU unit whose orbit is degenerate: one side zero
        model.blocks[0].mlp.down.weight[:, 3].zero_()
    theta = binding.entries(binding.to_work([p.detach() for _, p in binding.params], torch.float64))
    proj = Projector(binding.families, binding.entry_names(), None, balanced=True)  # as DDCAdam builds it
    assert proj.components, "the test needs coupled families"
    masks = []
    for fam in binding.families:
        masks.append(fam.degenerate(theta, fam.frame(theta)) if fam.kind == "scale"
                     else torch.zeros(fam.units, dtype=torch.bool))
    assert any(bool(m.any()) for m in masks)
    gen = torch.Generator().manual_seed(0)
    rhs = [torch.randn(*fam.coords(theta, theta).shape, 2, dtype=torch.float64, generator=gen)
           for fam in binding.families]
    rhs = [torch.where(m.reshape(-1, *([1] * (r.dim() - 1))), 0.0, r) for m, r in zip(masks, rhs)]
    grams = [torch.where(m, 1.0, fam.gram(theta)) if fam.kind != "head" else fam.gram(theta)
             for fam, m in zip(binding.families, masks)]

    def solved(compiled: bool, factored: int) -> list[torch.Tensor]:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiled)
        fact = proj.factor(theta, grams, masks)
        out = proj.solve(fact, rhs)
        assert len(fact["info"]) == factored and all(int(i) == 0 for i in fact["info"])
        return out

    n = len(proj.components)
    cg, direct = solved(False, 0), solved(True, n)
    monkeypatch.setattr(projection, "MAX_CG", 1)
    fallback = solved(False, n)
    for a, b, c in zip(cg, direct, fallback):
        scale = float(b.abs().max()) or 1.0
        assert float((a - b).abs().max()) <= 1e-12 * scale and float((c - b).abs().max()) <= 1e-12 * scale


@pytest.mark.parametrize("frames", ["balanced", "per_family"])
def test_update_is_horizontal_at_the_canonical_point(frames):
    """freeze: Δθ̃ has no component along the orbit (Xᵀ Δθ̃ = 0 to round-off)."""
    from gaugemath.backends.torch.check import canonical_point

    torch.manual_seed(4)
    model = tiny_gpt().double()
    binding = bind(model, frames=frames)
    opt = DDCAdam(model.parameters(), binding=binding, lr=1e-2, weight_decay=0.1)
    idx = torch.randint(0, 11, (4, 9))
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    before = [p.detach().clone() for _, p in binding.params]
    applied = canonical_point(binding, before)
    opt.step()
    after = [p.detach().clone() for _, p in binding.params]
    for fam, h in applied:
        fam.act(h, after)  # same frame: θ̃' − θ̃ is the canonical update
    delta = [a - b for a, b in zip(after, before)]
    for fam in binding.families:
        c = fam.coords(before, delta)
        scale = fam.noise_floor(before, delta, 1e-10)
        assert torch.all(c.abs() <= scale + 1e-15), fam.name


# ------------------------------------------------------------------------------ bad input
def test_tied_head_is_refused_for_the_shift_gauge():
    binding = bind(tiny_gpt(tie_embeddings=True))
    assert not any(f.family.gauge == "ce_shift" for f in binding.families)
    assert not any(f.name.startswith("ln_f") for f in binding.families)  # its consumer is the tied head
    reasons = [str(r) for r in binding.refusals]
    assert any(r.startswith("ce_shift refused") and "tied to head.weight" in r for r in reasons), reasons
    assert any(r.startswith("norm_scale refused on ln_f.weight") and "tied" in r for r in reasons), reasons
    with pytest.raises(GaugeError, match="gauge 'ce_shift'.*not a symmetry of this model"):
        bind(tiny_gpt(tie_embeddings=True), [GaugeSpec("ce_shift", {"W": "head.weight", "b": "head.bias"})])


class PostNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.norm(x)
        return y + self.fc(y)  # the normalised output also feeds the residual


def test_norm_feeding_a_residual_is_refused():
    model = PostNorm()
    spec = GaugeSpec("norm_scale.layernorm", {"gain": "norm.weight", "bias": "norm.bias", "W": "fc.weight"})
    with pytest.raises(GaugeError, match="gauge 'bind'.*explicit specs are checked"):
        bind(model, [spec])  # nothing to check it on: refused, not bound unchecked
    with pytest.raises(GaugeError, match="gauge 'norm_scale', block 'norm: gain|norm_scale.layernorm'.*loss changes"):
        bind(model, [spec], example=torch.randn(3, 4))
    found = bind(model, example=torch.randn(3, 4))
    assert not found.families
    assert any("residual" in r.reason and r.where == "norm.weight" for r in found.refusals), found.refusals
    ok = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2))
    bind(ok, [GaugeSpec("norm_scale.layernorm", {"gain": "0.weight", "bias": "0.bias", "W": "1.weight"})],
         example=torch.randn(3, 4))


def test_reference_models_pass_the_model_check():
    model = tiny_gpt(norm="layernorm", mlp="relu")
    binding = bind(model, example=torch.randint(0, 11, (2, 5)))
    assert len(binding.families) == 11 and binding.checked.startswith("fp64")


def test_head_dimension_that_does_not_split_and_shape_disagreements():
    model = nn.ModuleDict({"q": nn.Linear(4, 6, bias=False), "k": nn.Linear(4, 6, bias=False)})
    with pytest.raises(GaugeError, match="do not split into heads of d_head=4"):
        bind(model, [GaugeSpec("head_rotation.norope", {"W_Q": "q.weight", "W_K": "k.weight"}, d_head=4)],
             check=False)
    mlp = nn.ModuleDict({"a": nn.Linear(3, 5), "b": nn.Linear(4, 2)})
    with pytest.raises(GaugeError, match="roles disagree on the number of units"):
        bind(mlp, [GaugeSpec("relu_rescale.balance", {"W_in": "a.weight", "b_in": "a.bias", "W_out": "b.weight"})],
             check=False)
    with pytest.raises(GaugeError, match="no such parameter"):
        bind(mlp, [GaugeSpec("relu_rescale.balance", {"W_in": "x.weight", "b_in": "a.bias", "W_out": "b.weight"})],
             check=False)
    with pytest.raises(GaugeError, match="unknown gauge family"):
        bind(mlp, [GaugeSpec("relu_rescale.nope", {})], check=False)


def test_balance_frame_on_a_shared_matrix_is_refused_per_family_and_solved_jointly_balanced():
    """Per family, balancing a unit whose matrix another gauge scales does not compose (refused); the
    jointly balanced frame solves the two together and binds (checked on the model)."""
    model = tiny_gpt()
    from gaugemath.backends.torch import detect

    specs = [GaugeSpec("swiglu_rescale.balance", s.roles, s.name) if s.family.startswith("swiglu") else s
             for s in detect(model)]
    with pytest.raises(GaugeError, match="composite frame of norm_scale.rmsnorm .cols. and swiglu_rescale.balance "
                                         ".rows. on one tensor is not proved"):
        bind(model, specs, frames="per_family")
    binding = bind(model, specs)
    assert not binding.refusals and "canonical points agree" in binding.checked


def test_optimizer_errors_name_parameter_and_gauge():
    model = MLP(3, 4, 2)
    binding = bind(model)
    with pytest.raises(GaugeError, match="gauge 'relu_rescale', block 'fc_in.weight'.*not given to the optimizer"):
        DDCAdam([model.fc_out.weight, model.fc_in.bias], binding=binding)
    opt = DDCAdam(model.parameters(), binding=binding)
    model(torch.randn(5, 3)).sum().backward()
    model.fc_in.weight.grad[0, 0] = float("nan")
    with pytest.raises(GaugeError, match="gauge 'relu_rescale', block 'fc_in.weight'.*non-finite"):
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    skip = DDCAdam(model.parameters(), binding=binding, nonfinite="skip")
    skip.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # state untouched: allocated (by _init_group, before the finiteness check) but still that of a fresh optimizer
    assert all(float(t.abs().sum()) == 0 for st in skip.state.values() for k, t in st.items() if k != "shape")
    unchecked = DDCAdam(model.parameters(), binding=binding, nonfinite="unchecked")
    unchecked.step()  # no check, no error: the NaN reaches the parameters, as with torch.optim.AdamW
    assert torch.isnan(model.fc_in.weight).any()
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
    model.zero_grad()
    model(torch.randn(5, 3)).sum().backward()
    # a bound tensor without a gradient steps as with a zero one; with none of them having one, skipped
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    model.fc_out.weight.grad = None
    twin.fc_out.weight.grad.zero_()
    opt_twin = DDCAdam(twin.parameters(), binding=bind(twin), lr=1e-3)
    fresh = DDCAdam(model.parameters(), binding=binding, lr=1e-3)
    fresh.step()
    opt_twin.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    model.zero_grad(set_to_none=True)
    kept = [p.detach().clone() for p in model.parameters()]
    fresh.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), kept))
    with pytest.raises(TypeError, match="float16"):
        DDCAdam(MLP(2, 2, 2).half().parameters())
    with pytest.raises(ValueError, match="vertical='up'"):
        DDCAdam(model.parameters(), vertical="up")


def test_degenerate_orbit_is_stepped_and_the_live_units_stay_equivariant():
    """Issue 17: a unit with zero in- and out-weights (where weight decay drives rescale-symmetric units) has
    no canonical frame. It is decided by invariants (a zero side of the unit), given the identity frame and
    no vertical space; the step runs, the dead unit stays exactly zero, and under a hand-written rescale of
    the *live* units the protocol holds (fp64), as AdamW's does not."""
    def make():
        torch.manual_seed(0)
        m = MLP(3, 4, 2).double()
        with torch.no_grad():
            m.fc_in.weight[1].zero_()
            m.fc_in.bias[1] = 0.0
            m.fc_out.weight[:, 1].zero_()
        return m

    s = torch.tensor([2.0, 1.0, 0.5, 3.0], dtype=torch.float64)  # unit 1 (dead) untouched

    def g(m):
        with torch.no_grad():
            m.fc_in.weight.mul_(s[:, None])
            m.fc_in.bias.mul_(s)
            m.fc_out.weight.div_(s[None, :])

    def run(cls, **kw):
        a, b = make(), make()
        g(b)
        oa, ob = (cls(m.parameters(), **(kw if cls is torch.optim.AdamW else dict(kw, binding=bind(m))))
                  for m in (a, b))
        worst = 0.0
        for step in range(10):
            x = torch.randn(6, 3, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
            for m, o in ((a, oa), (b, ob)):
                o.zero_grad()
                m(x).pow(2).sum().backward()
                o.step()
            image = copy.deepcopy(a)
            g(image)
            worst = max(worst, max(float((p - q).abs().max()) for p, q in zip(b.parameters(), image.parameters())))
        return a, worst

    a, dev = run(DDCAdam, lr=1e-2, weight_decay=0.1)
    assert dev < 1e-12
    assert float(a.fc_in.weight[1].abs().max()) == 0.0 and float(a.fc_out.weight[:, 1].abs().max()) == 0.0
    assert run(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)[1] > 1e-6


def test_sparse_and_mismatched_gradients():
    emb = nn.Embedding(5, 3, sparse=True)
    opt = DDCAdam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(GaugeError, match="sparse"):
        opt.step()


def test_binding_prints_gauges_and_parameters():
    text = str(bind(GPT(11, 8, 1, 2, 16)))
    assert "blocks.0.attn" in text and "head_rotation.rope" in text and "head.bias" in text
    assert "swiglu_rescale.anchor" in text and "blocks.0.mlp.up.weight" in text


# ------------------------------------------------------------------------------ fused step pieces
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adam_written_over_its_own_gradient_equals_a_zeroed_buffer(dtype):
    """Step 3 runs torch's fused AdamW kernel with the horizontal gradient as both "parameters" and gradients
    (``lr = −1``, weight decay ``−1``: ``g·0 + u``), so ``u`` fills ``g̃_H``'s buffer and no new buffer is
    allocated. That relies on the kernel reading every operand of an entry before it stores it; this pins it
    (and a torch upgrade that changed it would fail here): ``u`` and both moments bit-equal to the kernel
    writing into a zeroed buffer, on lengths with and without a vector tail."""
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 1000, 100_003):
        g = torch.randn(n, dtype=dtype, generator=gen)
        m0 = 0.1 * torch.randn(n, dtype=dtype, generator=gen)
        v0 = 0.01 * torch.rand(n, dtype=dtype, generator=gen)
        runs = []
        for aliased in (False, True):
            m, v, step = m0.clone(), v0.clone(), torch.tensor(3.0)
            grad = g.clone()
            out = grad if aliased else torch.zeros_like(g)
            torch._fused_adamw_([out], [grad], [m], [v], [], [step], lr=-1.0, beta1=0.9, beta2=0.999,
                                weight_decay=-1.0 if aliased else 0.0, eps=1e-8, amsgrad=False, maximize=False)
            runs.append((out, m, v))
        assert all(torch.equal(a, b) for a, b in zip(*runs)), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vertical_rhs_equals_coords_zeroed_below_the_noise_floor(dtype):
    """``vertical_rhs`` forms each product ``θu`` once for the coordinate and the floor (scale families); it
    must equal, bit for bit, the two separate computations it replaces, on every family kind of a model: ours
    (SwiGLU/RMSNorm, ReLU/LayerNorm) and the re-typed nanoGPT and Hugging Face Llama (fused, transposed and
    permuted layouts; the families see the binding's work-layout entries)."""
    from third_party import CASES, bind_case

    torch.manual_seed(3)
    third = [c for c in CASES if c.name in ("nanoGPT (flash)", "llama")]
    assert len(third) == 2
    bindings = [bind(m) for m in (tiny_gpt().to(dtype), tiny_gpt(mlp="relu", norm="layernorm").to(dtype))]
    bindings += [bind_case(c, c.make().to(dtype)) for c in third]
    for binding in bindings:
        work = binding.to_work([p.detach() for _, p in binding.params], dtype)
        theta, u = binding.entries(work), binding.entries([torch.randn_like(t) for t in work])
        zeroed = kept = 0
        for fam in binding.families:  # rtol 0.5: a good share of the coordinates fall below the floor
            c = fam.coords(theta, u)
            want = torch.where(c.abs() <= fam.noise_floor(theta, u, 0.5), 0.0, c)
            assert torch.equal(fam.vertical_rhs(theta, u, 0.5), want), fam.name
            zeroed, kept = zeroed + int((want == 0).sum()), kept + int((want != 0).sum())
        assert zeroed > 0 and kept > 0, (zeroed, kept)  # both branches of the floor exercised


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_free_parameters_step_as_torch_fused_adamw(dtype):
    """``fused=True``: the free parameters take torch's fused AdamW kernel, bit-equal to
    ``torch.optim.AdamW(fused=True)`` over several steps (and the default stays bit-equal to the default
    AdamW); the bound parameters' step does not depend on ``fused`` (one step from the same gradients: equal)."""
    torch.manual_seed(0)
    model = tiny_gpt().to(dtype)
    idx = torch.randint(0, 11, (4, 9))
    twins = {k: copy.deepcopy(model) for k in ("ddc_fused", "ddc", "adamw_fused", "adamw")}
    opts = {
        "ddc_fused": DDCAdam(twins["ddc_fused"].parameters(), lr=1e-2, weight_decay=0.1, fused=True),
        "ddc": DDCAdam(twins["ddc"].parameters(), lr=1e-2, weight_decay=0.1),
        "adamw_fused": torch.optim.AdamW(twins["adamw_fused"].parameters(), lr=1e-2, weight_decay=0.1, fused=True),
        "adamw": torch.optim.AdamW(twins["adamw"].parameters(), lr=1e-2, weight_decay=0.1),
    }
    for _ in range(3):
        for k, opt in opts.items():
            opt.zero_grad()
            twins[k].loss(idx[:, :-1], idx[:, 1:]).backward()
            opt.step()
    params = {k: dict(m.named_parameters()) for k, m in twins.items()}
    for name in params["ddc"]:
        assert torch.equal(params["ddc_fused"][name], params["adamw_fused"][name]), name
        assert torch.equal(params["ddc"][name], params["adamw"][name]), name
    pair = [copy.deepcopy(model) for _ in range(2)]
    for m, fused in zip(pair, (True, False)):
        m.loss(idx[:, :-1], idx[:, 1:]).backward()
        DDCAdam(m.parameters(), binding=bind(m), lr=1e-2, weight_decay=0.1, fused=fused).step()
    bound = {n for n, _ in bind(pair[0]).params}
    assert bound and set(dict(model.named_parameters())) - bound  # both kinds present
    for (name, p), (_, q) in zip(*(m.named_parameters() for m in pair)):
        if name in bound:
            assert torch.equal(p, q), name
    with pytest.raises(TypeError, match="fused="):
        DDCAdam(model.parameters(), fused="yes")


def test_fused_free_parameters_compile_as_the_foreach_form():
    """Under ``torch.compile`` the free parameters of ``DDCAdam(fused=True)`` take the foreach form (the fused
    kernel is eager-only here): the compiled step runs and equals ``fused=False``'s compiled step bit for bit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))  # free parameters only: the branch at issue
    x = torch.randn(6, 4)
    pair = [copy.deepcopy(model) for _ in range(2)]
    for m, fused in zip(pair, (True, False)):
        step = torch.compile(DDCAdam(m.parameters(), lr=1e-2, weight_decay=0.1, fused=fused).step, backend="eager")
        for _ in range(2):
            m.zero_grad()
            m(x).square().sum().backward()
            step()
    assert all(torch.equal(p, q) for p, q in zip(pair[0].parameters(), pair[1].parameters()))


def test_fused_free_bf16_parameters_step_on_fp32_copies():
    """``fused=True`` with bf16 free parameters: the fused kernel runs on fp32 copies with fp32 state (the
    foreach form's convention for bf16), so one step equals ``AdamW(fused=True)`` on an fp32 copy of the
    parameters, rounded to bf16; the state is fp32."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 7).to(torch.bfloat16))
    ref = nn.Parameter(w.detach().float().clone())
    g = torch.randn(5, 7).to(torch.bfloat16)
    w.grad, ref.grad = g.clone(), g.float()
    ours = DDCAdam([w], lr=1e-2, weight_decay=0.1, fused=True)
    ours.step()
    torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1, fused=True).step()
    assert torch.equal(w.detach(), ref.detach().to(torch.bfloat16))
    assert ours.state[w]["exp_avg"].dtype == torch.float32
