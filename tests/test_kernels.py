"""The generated Triton kernels (``backends/torch/_kernels.py``) against the pure-torch reference path.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set here before
``triton`` is imported); on a CUDA machine the same tests also run the compiled kernels
(``test_cuda_kernels_match_reference``). torch.optim's habit: every fast path equals the
for-loop path, here to 1e-6 (fp32) and 1e-12 (fp64).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import copy  # noqa: E402

import pytest  # noqa: E402
import sympy as sp  # noqa: E402
import torch  # noqa: E402
from gaugemath.backends.torch import DDCAdam, DDCMuon, GaugeSpec, bind  # noqa: E402
from gaugemath.backends.torch import kernels as K  # noqa: E402

import gaugemath.verify as V  # noqa: E402
from gaugemath.kernelgen import TritonPrinter, floor_expr  # noqa: E402
from gaugemath.models import MLP, tiny_gpt  # noqa: E402

triton = pytest.importorskip("triton")
INTERPRETED = K.triton_unavailable(torch.device("cpu")) is None
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="triton interpreter not active in this process")
CONSTRUCTIONS = {c.name: c for c in V._constructions()}


def test_triton_printer_prints_only_exact_operations():
    a, b = sp.symbols("a b", positive=True)
    p = TritonPrinter()
    quarter = a ** sp.Rational(1, 4) / (a + b) ** sp.Rational(1, 4)
    assert p.doprint(quarter) == "tl.sqrt(tl.sqrt(a))/tl.sqrt(tl.sqrt(a + b))"
    assert p.doprint(1 / sp.sqrt(a)) == "1/tl.sqrt(a)"
    assert p.doprint(a**3) == "(a*a*a)"
    assert p.doprint(a ** sp.Rational(3, 2)) == "(tl.sqrt(a)*tl.sqrt(a)*tl.sqrt(a))"
    with pytest.raises(ValueError):
        p.doprint(a ** sp.Rational(1, 3))
    with pytest.raises(ValueError):
        p.doprint(sp.exp(a))
    with pytest.raises(ValueError):
        p.doprint(a * 0.5)
    d, e = sp.symbols("dot_W dot_b", real=True)
    assert floor_expr(d - 2 * e) == sp.Symbol("adot_W", positive=True) + 2 * sp.Symbol("adot_b", positive=True)
    with pytest.raises(ValueError):
        floor_expr(d * e)


def test_path_selection():
    cpu = torch.device("cpu")
    assert K.select("reference", cpu) == "reference"
    assert K.select("auto", cpu) == "reference"  # CPU: reference even when the interpreter could run
    with pytest.raises(ValueError, match="kernels="):
        K.select("fast", cpu)
    with pytest.raises(ValueError, match="kernels="):
        DDCAdam(tiny_gpt().parameters(), kernels="fast")


def test_forcing_triton_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="kernels='triton'.*CUDA"):
        K.select("triton", torch.device("cpu"))
    model = tiny_gpt()
    opt = DDCAdam(model.parameters(), binding=bind(model), kernels="triton")
    model.loss(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)).backward()
    with pytest.raises(RuntimeError, match="interpreter"):
        opt.step()


def _family_cases():
    cases = []
    for name in sorted(CONSTRUCTIONS):
        if name.startswith(("transformer", "vit")) or name == "head_rotation.norope":  # matrix frame: no kernels
            continue
        cases.append(name)
    return cases + ["relu_rescale.balance"]


def _bound(case, dtype):
    torch.manual_seed(0)
    if case == "relu_rescale.balance":
        model = MLP(3, 6, 5).to(dtype)
        spec = GaugeSpec("relu_rescale.balance", {"W_in": "fc_in.weight", "b_in": "fc_in.bias",
                                                  "W_out": "fc_out.weight"})
        binding = bind(model, [spec], check=False)  # the catalogue construction (proved)
    else:
        model, specs, _ = CONSTRUCTIONS[case].make()
        binding = bind(model.to(dtype), specs, check=False)
    return binding


@needs_interpreter
@pytest.mark.parametrize("case", _family_cases())
def test_family_kernels_equal_the_reference_operations(case):
    """Frame, action on (θ, g), Gram, thresholded and plain coordinates, lift, inverse action."""
    binding = _bound(case, torch.float64)
    gen = torch.Generator().manual_seed(1)
    theta = [p.detach().clone() + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for _, p in binding.params]
    grad = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for _, p in binding.params]
    checked = 0
    for fam in binding.families:
        kfam = K.KernelFamily.of(fam)
        if kfam is fam:
            continue
        checked += 1
        ta, ga = [t.clone() for t in theta], [g.clone() for g in grad]
        tb, gb = [t.clone() for t in theta], [g.clone() for g in grad]
        ha, hb = fam.frame(ta), kfam.frame(tb)
        for x, y in zip(ha if isinstance(ha, tuple) else (ha,), hb if isinstance(hb, tuple) else (hb,)):
            torch.testing.assert_close(y, x, rtol=1e-13, atol=1e-14)
        fam.act_pair(ha, ta, ga)
        kfam.act_pair(ha, tb, gb)
        torch.testing.assert_close(tb, ta, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(gb, ga, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(kfam.gram(tb), fam.gram(ta), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(kfam.coords(tb, gb), fam.coords(ta, ga), rtol=1e-12, atol=1e-12)
        for rtol in (0.0, 1e-3, 10.0):  # none, some and all coordinates below the floor
            torch.testing.assert_close(kfam.vertical_rhs(tb, gb, rtol), fam.vertical_rhs(ta, ga, rtol),
                                       rtol=1e-12, atol=1e-12)
        coef = torch.randn(fam.units, generator=gen, dtype=torch.float64)
        fam.lift(coef, ta, ga, alpha=-0.5)
        kfam.lift(coef, tb, gb, alpha=-0.5)
        torch.testing.assert_close(gb, ga, rtol=1e-13, atol=1e-13)
        fam.act(ha, ta, inverse=True)
        kfam.act(ha, tb, inverse=True)
        torch.testing.assert_close(tb, ta, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(tb, theta, rtol=1e-12, atol=1e-12)  # h⁻¹·h·θ = θ
    assert checked


def _rel_dev(a, b) -> float:
    num = sum(float((p.detach() - q.detach()).double().pow(2).sum()) for p, q in zip(a, b))
    den = sum(float(p.detach().double().pow(2).sum()) for p in a)
    return (num / den) ** 0.5


def _twin_runs(make_model, make_opt, steps, dtype, tol):
    torch.manual_seed(0)
    ma = make_model().to(dtype)
    mb = copy.deepcopy(ma)
    oa, ob = make_opt(ma, "reference"), make_opt(mb, "triton")
    gen = torch.Generator().manual_seed(3)
    worst = 0.0
    for _ in range(steps):
        idx = torch.randint(0, ma.vocab, (2, 7), generator=gen)
        for m, o in ((ma, oa), (mb, ob)):
            o.zero_grad()
            m.loss(idx[:, :-1], idx[:, 1:]).backward()
            o.step()
        worst = max(worst, _rel_dev(list(ma.parameters()), list(mb.parameters())))
        assert worst < tol, worst
    return worst


@needs_interpreter
@pytest.mark.parametrize("dtype,tol,steps", [(torch.float32, 1e-6, 2),
                                             pytest.param(torch.float64, 1e-12, 2, marks=pytest.mark.slow)])
def test_ddcadam_kernel_path_equals_reference(dtype, tol, steps):
    def make_opt(m, kernels):
        return DDCAdam(m.parameters(), binding=bind(m), lr=1e-2, weight_decay=0.1, vertical="adam", kernels=kernels)

    _twin_runs(tiny_gpt, make_opt, steps, dtype, tol)


@needs_interpreter
@pytest.mark.slow
def test_ddcadam_kernel_path_layernorm_relu_fp32_canonical():
    def make_opt(m, kernels):
        return DDCAdam(m.parameters(), binding=bind(m), lr=1e-2, weight_decay=0.1, kernels=kernels,
                       canonical_dtype=torch.float32)

    _twin_runs(lambda: tiny_gpt(norm="layernorm", mlp="relu"), make_opt, 2, torch.float32, 1e-6)


@needs_interpreter
def test_ddcmuon_kernel_path_equals_reference():
    def make_opt(m, kernels):
        return DDCMuon(m.parameters(), binding=bind(m), lr=1e-2, adam_lr=1e-2, kernels=kernels)

    _twin_runs(tiny_gpt, make_opt, 1, torch.float32, 1e-6)


@needs_interpreter
@pytest.mark.parametrize("name", ["ce_shift"] + [pytest.param(n, marks=pytest.mark.slow) for n in
                                                 ("norm_scale.layernorm", "head_rotation.rope", "relu_rescale")])
def test_verify_protocol_passes_on_the_kernel_path(name, monkeypatch):
    """ddc.md §3 protocol (run B from g·θ) with DDCAdam on the kernel path (``GAUGEMATH_KERNELS``)."""
    monkeypatch.setenv("GAUGEMATH_KERNELS", "triton")
    assert V.run_protocol(CONSTRUCTIONS[name], "ddc_adam", "float32", steps=3) < V.THRESHOLDS["float32"]


CUDA_SCRIPT = """
import copy, torch
from gaugemath.backends.torch import DDCAdam, bind
from gaugemath.models import tiny_gpt
torch.manual_seed(0)
ma = tiny_gpt().cuda(); mb = copy.deepcopy(ma)
oa = DDCAdam(ma.parameters(), binding=bind(ma), lr=1e-2, weight_decay=0.1, kernels="reference")
ob = DDCAdam(mb.parameters(), binding=bind(mb), lr=1e-2, weight_decay=0.1)  # auto: compiled Triton
worst = 0.0
for _ in range(5):
    idx = torch.randint(0, 11, (2, 7), device="cuda")
    for m, o in ((ma, oa), (mb, ob)):
        o.zero_grad(); m.loss(idx[:, :-1], idx[:, 1:]).backward(); o.step()
    num = sum(float((p - q).double().pow(2).sum()) for p, q in zip(ma.parameters(), mb.parameters()))
    worst = max(worst, (num / sum(float(p.double().pow(2).sum()) for p in ma.parameters())) ** 0.5)
assert ob._plans[0]["path"] == "triton"
print(worst)
assert worst < 1e-6, worst
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_reference():
    """On a GPU: the compiled kernels (``auto``) vs the reference path, in a process without the interpreter."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", CUDA_SCRIPT], check=True, env=env, timeout=600)
