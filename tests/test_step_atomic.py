"""A step either commits everything or nothing (issue 17): for random small models, optimizers and bad
inputs, every raised error leaves parameters and optimizer state bit-identical to before the step.

Bad inputs: a NaN or infinite gradient, a NaN parameter, a parameter scaled to 1e30 (1e300 in fp64: its DDC
update overflows), a bound parameter resized between steps. Each is put into one
random tensor of one random param group, after some good steps."""

from __future__ import annotations

import copy

import torch
from gaugemath.backends.torch import DDCAdam, DDCMuon, bind
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugemath.errors import GaugeError
from gaugemath.models import tiny_gpt

BAD = ("nan_grad", "inf_grad", "nan_param", "huge_param", "resized")  # (torch refuses a .grad of another shape/dtype)


def _bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaN payloads included): ``torch.equal`` says NaN ≠ NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        view = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
                torch.float16: torch.int16}[a.dtype]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def _snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
             for p, s in opt.state.items()}
    return params, state, [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _same(model, opt, snap) -> bool:
    params, state, groups = snap
    if not all(_bits(a, b.detach()) for a, b in zip(params, model.parameters())):
        return False
    now = {id(p): s for p, s in opt.state.items() if s}
    if set(now) != {k for k, v in state.items() if v}:
        return False
    for k, s in now.items():
        if set(s) != set(state[k]):
            return False
        for key, v in s.items():
            w = state[k][key]
            if isinstance(v, torch.Tensor) and not _bits(v, w):
                return False
    return groups == [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


@settings(max_examples=15, deadline=None)
@given(mlp=st.sampled_from(["swiglu", "relu"]), cls=st.sampled_from([DDCAdam, DDCMuon]),
       groups=st.sampled_from([1, 2]), good=st.integers(0, 2), bad=st.sampled_from(BAD),
       which=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_a_raised_error_leaves_everything_as_it_was(mlp, cls, groups, good, bad, which, dtype):
    torch.manual_seed(which)
    model = tiny_gpt(mlp=mlp, n_layers=1).to(dtype)
    binding = bind(model)
    params = list(model.named_parameters())
    if groups == 2:  # decay for matrices, none for vectors: gauges span both groups (DDCAdam only)
        spec = [{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": 0.1},
                {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0 if cls is DDCAdam else 0.1}]
    else:
        spec = [p for _, p in params]
    opt = cls(spec, binding=binding, lr=1e-2)
    idx = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(which))
    for _ in range(good):
        opt.zero_grad()
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        opt.step()
    opt.zero_grad()
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    name, p = params[which % len(params)]
    bound = {id(q) for _, q in binding.params}
    if bad in ("huge_param", "resized") and id(p) not in bound:
        name, p = next((n, q) for n, q in params[which % len(params):] + params if id(q) in bound)
    with torch.no_grad():
        if bad == "nan_grad":
            p.grad.view(-1)[which % p.numel()] = float("nan")
        elif bad == "inf_grad":
            p.grad.view(-1)[which % p.numel()] = float("inf")
        elif bad == "nan_param":
            p.view(-1)[which % p.numel()] = float("nan")
        elif bad == "huge_param":
            p.mul_(1e30 if dtype == torch.float32 else 1e300)
    if bad == "resized" and good == 0:
        return  # a shape change is only visible against earlier state
    if bad == "resized":
        p.data = torch.zeros(p.shape[0] + 2, *p.shape[1:], dtype=p.dtype)
        p.grad = torch.zeros_like(p)
    snap = _snapshot(model, opt)
    try:
        opt.step()
    except (GaugeError, TypeError, ValueError) as error:
        assert name.split(".")[-1] in str(error) or "gauge" in str(error), str(error)
        assert _same(model, opt, snap), (bad, name, str(error))
        return
    # no error: only inputs that a step may take (a NaN parameter not bound, a huge free parameter) got here
    assert bad in ("nan_param", "huge_param") and id(p) not in bound or bad == "huge_param", (bad, name)


def test_skip_mode_skips_a_step_whose_update_is_not_finite():
    torch.manual_seed(0)
    model = tiny_gpt(n_layers=1)
    opt = DDCAdam(model.parameters(), binding=bind(model), lr=1e-2, nonfinite="skip")
    idx = torch.randint(0, 11, (2, 6))
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    opt.step()
    opt.zero_grad()
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    with torch.no_grad():
        model.blocks[0].mlp.up.weight[0, 0] = float("nan")  # a NaN parameter: the update is not finite
    snap = _snapshot(model, opt)
    opt.step()
    assert _same(model, opt, snap)
    copy.deepcopy(opt.state_dict())


def test_a_failure_in_the_free_parameters_step_leaves_the_bound_ones_unwritten(monkeypatch):
    """The free parameters' AdamW runs after the bound part's checks; should it raise (e.g. torch's fused kernel
    refusing its inputs, ``fused=True``), the bound parameters must not have been written yet: they are written
    last (:meth:`DDCAdam.step`), and the state the bound part wrote is restored from the step's journal."""
    for cls in (DDCAdam, DDCMuon):
        torch.manual_seed(0)
        model = tiny_gpt(n_layers=1)
        opt = cls(model.parameters(), binding=bind(model), lr=1e-2)
        idx = torch.randint(0, 11, (2, 6))
        model.loss(idx[:, :-1], idx[:, 1:]).backward()
        opt.step()
        snap = _snapshot(model, opt)

        def refuse(self, group, slots):
            raise RuntimeError("the free parameters' kernel refused its inputs")

        with monkeypatch.context() as m:
            m.setattr(cls, "_adamw", refuse)
            try:
                opt.step()
            except RuntimeError as error:
                assert "refused" in str(error)
            else:
                raise AssertionError("the step did not raise")
        assert _same(model, opt, snap), cls.__name__
