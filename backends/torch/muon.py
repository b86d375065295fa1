"""``DDCMuon``: the Dead-Direction Conditioner on a Muon base (ddc.md §4), torch.

Muon (momentum, Nesterov, Newton–Schulz orthogonalisation, ``lr·√max(1, A/B)``, decoupled decay)
for the tensors in ``muon_params`` (the hidden matrices, in the usual recipe); AdamW with the
``adam_*`` hyper-parameters for the rest. Tensors bound to no gauge take exactly
``torch.optim.Muon``'s / ``torch.optim.AdamW``'s update, so with no binding ``DDCMuon`` *is*
``Muon`` + ``AdamW``.

Gauge-bound tensors go through the canonical frame of :class:`DDCAdam` (frames, round-off-aware
split, horizontal update, map back); only the base direction changes: the Muon momentum of
``g̃_H`` is kept in the canonical frame and orthogonalised there. Everything the step computes
is then a function of the G-invariant ``(θ̃, g̃)``, so *every* bound gauge is exact on the Muon
base, rotations included; rotations would also commute with the orthogonaliser directly
(``msign(PMQ) = P msign(M) Q``; proved for the Newton–Schulz step as a non-commutative polynomial
identity in ``tests/test_torch_muon.py``).

Precision: ``torch.optim.Muon`` runs Newton–Schulz in bfloat16. Free tensors do the same
(``ns_dtype``); bound tensors use ``canonical_ns_dtype`` (float64 by default; their momentum buffer
is kept in that dtype: ``canonical_ns_dtype=torch.float32`` halves it), because bf16 rounding of
two runs' nearly equal canonical momenta differs by whole bf16 ulps, and float32 takes the fp32 protocol
on ``vit.layernorm_relu`` to 1.09e-6 (seed 2; float64: 6.6e-7). What remains is Newton–Schulz amplifying
the fp32 rounding of its inputs where a LayerNorm-fed gradient is nearly singular, as in any Muon
(``bench/muon_floor.py``; docs/backends/muon.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .optim import DDCAdam, scalar, step_count

DEFAULT_NS = (3.4445, -4.775, 2.0315)


def newton_schulz(g: Tensor, coefficients=DEFAULT_NS, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Quintic Newton–Schulz ``≈ msign(g)``, operation for operation as ``torch.optim.Muon`` (in ``dtype``).

    ``X ← X/‖X‖_F``; ``X ← aX + (bA + cA²)X`` with ``A = XXᵀ`` (``g`` transposed when tall).
    """
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    return x.T if tall else x


def _adjust(lr_fn: str | None, shape) -> float:
    a, b = shape[:2]
    if lr_fn is None or lr_fn == "original":
        return math.sqrt(max(1, a / b))
    if lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    return 1.0


class DDCMuon(DDCAdam):
    """Muon for ``muon_params`` (2-D), AdamW for the rest, lifted to a gauge-equivariant optimizer.

    Args (beyond :class:`DDCAdam`'s ``binding``, ``vertical``, ``nonfinite``, ``canonical_dtype``):
        lr, weight_decay, momentum, nesterov, ns_coefficients, ns_steps, eps, adjust_lr_fn: as
            ``torch.optim.Muon`` (for ``muon_params``).
        adam_lr, adam_betas, adam_eps, adam_weight_decay: AdamW for the other tensors.
        muon_params: the tensors that take Muon (default: every 2-D parameter given).
        ns_dtype / canonical_ns_dtype: Newton–Schulz precision for free / bound tensors.
    """

    def __init__(self, params: Iterable, binding=None, lr: float = 0.02, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, ns_coefficients=DEFAULT_NS, ns_steps: int = 5,
                 eps: float = 1e-7, adjust_lr_fn: str | None = None, adam_lr: float = 3e-4,
                 adam_betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 adam_weight_decay: float = 0.1, muon_params: Iterable[Tensor] | None = None,
                 ns_dtype: torch.dtype = torch.bfloat16, canonical_ns_dtype: torch.dtype = torch.float64,
                 **ddc):
        params = list(params)
        super().__init__(params, binding=binding, lr=lr, betas=adam_betas, eps=adam_eps, weight_decay=weight_decay,
                         **ddc)
        for g in self.param_groups:
            g.setdefault("momentum", momentum)
            g.setdefault("nesterov", nesterov)
            g.setdefault("adam_lr", adam_lr)
            g.setdefault("adam_weight_decay", adam_weight_decay)
        flat = [p for g in self.param_groups for p in g["params"]]
        chosen = [p for p in flat if p.dim() == 2] if muon_params is None else list(muon_params)
        for p in chosen:
            if p.dim() != 2:
                raise ValueError(f"muon_params: a {p.dim()}-D tensor of shape {tuple(p.shape)}; Muon needs matrices")
        self.muon_ids = {id(p) for p in chosen}
        self.ns = (tuple(ns_coefficients), ns_steps, eps, adjust_lr_fn, ns_dtype, canonical_ns_dtype)

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Float64 unless ``canonical_dtype`` says otherwise: Newton–Schulz amplifies the rounding of
        near-null gradient directions (``bench/muon_floor.py``); with a float32 canonical frame the fp32
        protocol reaches 1.03e-6 on ``vit.layernorm_relu`` (seed 2) against 5.3e-7 in float64."""
        return self.canonical_dtype or torch.float64

    #: DDCMuon steps a gauge's tensors with one weight decay (DDCAdam takes a different one per group)
    SHARED = DDCAdam.SHARED + ("weight_decay", "adam_weight_decay", "momentum", "nesterov", "adam_lr")

    def _init_state(self, p: Tensor, work: torch.dtype, bound: bool) -> None:
        """:meth:`DDCAdam._init_state`, plus the momentum buffer of a Muon tensor (bound ones in
        ``canonical_ns_dtype``, free ones in the parameter dtype as ``torch.optim.Muon``)."""
        super()._init_state(p, work, bound)
        st = self.state[p]
        if id(p) in self.muon_ids and "momentum_buffer" not in st:
            dtype = self.ns[5] if bound else p.dtype
            st["momentum_buffer"] = self._zeros(p, dtype, bound)

    def _uses_moments(self, p: Tensor) -> bool:
        return id(p) not in self.muon_ids  # Muon tensors keep one momentum buffer, no Adam moments

    # ------------------------------------------------------------------ free tensors
    def _adamw(self, group: dict, slots: list[tuple]) -> None:
        muon = [s for s in slots if id(s[0]) in self.muon_ids]
        rest = [s for s in slots if id(s[0]) not in self.muon_ids]
        adam_group = dict(group, lr=group["adam_lr"], weight_decay=group["adam_weight_decay"])
        super()._adamw(adam_group, rest)
        coeffs, steps, eps, lr_fn, ns_dtype, _ = self.ns
        lr, wd, mom = scalar(group["lr"]), group["weight_decay"], group["momentum"]
        for p, grad, st in muon:  # torch.optim.Muon._single_tensor_muon, operation for operation
            buf = st["momentum_buffer"]
            buf.lerp_(grad, 1 - mom)
            update = grad.lerp(buf, mom) if group["nesterov"] else buf
            update = newton_schulz(update, coeffs, steps, eps, ns_dtype)
            p.mul_(1 - lr * wd)
            if isinstance(lr, Tensor):  # under torch.compile
                p.sub_(update.to(p.dtype) * (lr * _adjust(lr_fn, p.shape)))  # not in bf16
            else:
                p.add_(update, alpha=-lr * _adjust(lr_fn, p.shape))

    # ------------------------------------------------------------------ bound tensors
    FUSED_ADAM = False  # the base directions are Muon's (and Adam's for the rest): see _base_directions

    def _base_directions(self, group, params, states, grad_h, theta, sdtype, work, fused: bool = False):
        """Muon directions (canonical momentum, orthogonalised) and AdamW directions, expressed so
        that the step is ``−lr (u + λθ̃)`` with the Muon ``lr`` and ``λ`` of the group."""
        adam = [k for k, p in enumerate(params) if id(p) not in self.muon_ids]
        u_adam, bc1, bc2 = (super()._base_directions(group, [params[k] for k in adam], [states[k] for k in adam],
                                                     [grad_h[k] for k in adam], theta, sdtype, work, fused)
                            if adam else ([], None, None))
        if bc1 is None:  # no Adam tensor bound: the vertical channel's bias corrections from the step count
            for st in states:
                st["step"] += 1
            step = step_count(states[0])
            bc1, bc2 = 1 - group["betas"][0] ** step, 1 - group["betas"][1] ** step
        else:
            for k, st in enumerate(states):
                if k not in adam:
                    st["step"] += 1
        coeffs, steps, eps, lr_fn, _, ns_dtype = self.ns
        ref, wd, mom = scalar(group["lr"]), group["weight_decay"], group["momentum"]
        lr = group.get("_muon_lr", ref)  # the step is −ref (u + λθ̃); ref = lr unless lr = 0 (see _ddc)
        ratio, awd = scalar(group["adam_lr"]) / ref, group["adam_weight_decay"]
        u: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        for j, k in enumerate(adam):  # ref (u + λθ̃) = adam_lr (d + λ_a θ̃)
            u[k] = ratio * (u_adam[j] + awd * theta[k]) - wd * theta[k]
        for k, p in enumerate(params):
            if id(p) not in self.muon_ids:
                continue
            buf = states[k]["momentum_buffer"]
            g = grad_h[k].to(buf.dtype)
            buf.lerp_(g, 1 - mom)
            update = g.lerp(buf, mom) if group["nesterov"] else buf
            u[k] = newton_schulz(update, coeffs, steps, eps, ns_dtype).to(work) * _adjust(lr_fn, p.shape)
            if lr is not ref:  # ref (u + λθ̃) = lr (msign + λθ̃)
                u[k] = (lr / ref) * u[k] + (lr / ref - 1) * wd * theta[k]
        return u, bc1, bc2

    def _ddc(self, group: dict, plan: dict, slots: list[tuple]) -> Callable[[], None]:
        """:meth:`DDCAdam._ddc` with the step written as ``−ref (u + λθ̃)``: ``ref`` is the Muon ``lr``,
        or, while it is 0 (a warmup from zero), the Adam lr (or 1 if that is 0 too), so that the Adam
        tensors of a gauge still take their step and nothing divides by zero."""
        lr = scalar(group["lr"])
        if not isinstance(lr, Tensor) and lr == 0:
            adam_lr = scalar(group["adam_lr"])
            ref = adam_lr if not isinstance(adam_lr, Tensor) and adam_lr != 0 else 1.0
            group = dict(group, lr=ref, _muon_lr=0.0)
        return super()._ddc(group, plan, slots)
