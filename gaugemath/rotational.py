"""Rotational equilibrium (seed 004, Kosson et al.; ``../shared/spec/theory.md`` §3.6): predictions, measurements and
the Rotational Wrapper.

A *rotational* weight vector ``ω`` is one the loss does not see the scale of (``L(sω) = L(ω)``, ``s > 0``): a row
feeding a per-channel normalization, or a weight feeding a LayerNorm alone (the catalogue's one-sided
``norm_scale.producer``; ``bind()`` does not detect it yet, and in transformer blocks, whose norms read the residual
stream, no weight is scale-invariant, so the vectors are chosen by hand, :func:`rows`, as [K] does with a learnable
gain). Its gradient is orthogonal to it, so gradient steps grow its norm and weight decay
shrinks it; under a random walk (zero-mean gradients independent across steps) the two balance at an
equilibrium norm, where each step rotates ``ω`` by an expected angle ``η_r`` that depends on the optimizer's
hyper-parameters only ([K] Table 1, :func:`equilibrium`):

- AdamW: ``η_g = η √(C (1−β₁)/(1+β₁))``, ``η_r = √(2ηλ (1−β₁)/(1+β₁))``, ``‖ω̂‖ = √(ηC / (2λ − ηλ²))``;
- SGDM: ``η_g = η √(E‖g‖² / (1−α²))``, ``η_r = √(2ηλ / (1+α))``, ``‖ω̂‖ = (η E‖g̃‖² / (2λ(1−α) − ηλ²))^{1/4}``;
- Lion: ``η_g = η √C``, ``η_r = √(π η λ K)``, ``‖ω̂‖ = √(2ηC / (π(2λ − ηλ²))) K^{−1/2}``

(``C`` the vector's size, ``g̃ = g‖ω‖`` the gradient of a unit-norm vector, ``K = (1−β₁)² + β₁²(1−β₂)/(1+β₂)``.)
The random-walk regime is an assumption: where successive gradients are correlated (a deterministic descent, a
spiral) the equilibrium differs ([TK] vs [K], theory.md §2.5 and S16), so measured and predicted values agree
only as far as a run is in that regime; :class:`RotationMeter` measures them.

:class:`RotationalWrapper` is the seed's Algorithm 1: it takes the inner optimizer's gradient update of each
rotational vector, projects out its radial part (the vertical direction of the vector's scale gauge), normalises
it by a running RMS so that it rotates the vector by ``η̂_r`` on average, and keeps the vector on the sphere of
its initial norm (centred, by default); every other parameter takes the inner optimizer's update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gaugemath.errors import GaugeError

OPTIMIZERS = ("adamw", "sgdm", "lion")


@dataclass(frozen=True)
class Equilibrium:
    """[K]'s equilibrium of one rotational vector: ``rms_update`` ``η̂_g``, ``angular_update`` ``η̂_r`` (radians per
    step) and ``norm`` ``‖ω̂‖`` (``None`` where it needs ``grad_sq`` and none was given)."""

    rms_update: float | None
    angular_update: float
    norm: float | None


def equilibrium(optimizer: str, lr: float, weight_decay: float, size: int, *, betas: tuple[float, float] = (0.9, 0.999),
                momentum: float = 0.9, grad_sq: float | None = None, unit_grad_sq: float | None = None) -> Equilibrium:
    """The predicted equilibrium ([K] Table 1, the exact forms: Eq. 37, 40, 47, 51, 70–72) of a rotational vector of
    ``size`` entries under ``optimizer`` (``"adamw"``: decoupled decay; ``"sgdm"``: heavy ball with the decay inside
    the momentum, ``torch.optim.SGD(momentum=α, weight_decay=λ)``; ``"lion"``). SGDM's RMS update needs
    ``grad_sq = E‖g‖²`` and its norm ``unit_grad_sq = E‖g̃‖²`` (the gradient of the unit-norm vector)."""
    eta, lam, c = float(lr), float(weight_decay), int(size)
    if eta <= 0 or lam <= 0 or c <= 0:
        raise ValueError(f"equilibrium needs lr, weight_decay and size > 0 (got {lr}, {weight_decay}, {size})")
    if not 2 * lam - eta * lam * lam > 0:
        raise ValueError(f"lr·weight_decay = {eta * lam} ≥ 2: weight decay alone diverges, there is no equilibrium")
    if optimizer == "adamw":
        b1 = betas[0]
        r = (1 - b1) / (1 + b1)
        return Equilibrium(eta * math.sqrt(c * r), math.sqrt(2 * eta * lam * r),
                           math.sqrt(eta * c / (2 * lam - eta * lam * lam)))
    if optimizer == "sgdm":
        a = momentum
        rms = None if grad_sq is None else eta * math.sqrt(grad_sq / (1 - a * a))
        norm = None if unit_grad_sq is None else (eta * unit_grad_sq / (2 * lam * (1 - a) - eta * lam * lam)) ** 0.25
        return Equilibrium(rms, math.sqrt(2 * eta * lam / (1 + a)), norm)
    if optimizer == "lion":
        b1, b2 = betas
        k = (1 - b1) ** 2 + b1 * b1 * (1 - b2) / (1 + b2)
        return Equilibrium(eta * math.sqrt(c), math.sqrt(math.pi * eta * lam * k),
                           math.sqrt(2 * eta * c / (math.pi * (2 * lam - eta * lam * lam))) / math.sqrt(k))
    raise ValueError(f"optimizer={optimizer!r}: choose from {OPTIMIZERS}")


def rows(*weights: Tensor) -> list[tuple[Tensor, Callable[[Tensor], Tensor]]]:
    """Rotational vectors "per filter" ([K]'s default granularity): every row of each weight matrix, as
    ``(parameter, view)`` pairs; ``view(t)`` is the ``(units, size)`` matrix of a tensor shaped like it, a view of
    its storage (``Tensor.view``: a weight whose rows are not contiguous, e.g. a channels-last convolution, raises
    instead of being updated through a copy)."""
    return [(w, lambda t: t.view(t.shape[0], -1)) for w in weights]


class _Gain(torch.nn.Module):
    """``W = g ⊙ ω / ‖ω‖`` per row (:func:`learnable_gain`; ``torch.nn.utils.parametrize`` with two originals)."""

    def forward(self, omega: Tensor, gain: Tensor) -> Tensor:
        flat = omega.reshape(omega.shape[0], -1)
        return (flat * (gain / flat.norm(dim=1))[:, None]).reshape(omega.shape)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``ω = W``, ``g = ‖W_row‖``: the weight is unchanged."""
        return weight, weight.reshape(weight.shape[0], -1).norm(dim=1)


def learnable_gain(module: torch.nn.Module, name: str = "weight") -> tuple[Tensor, Tensor]:
    """[K]'s learnable gain for scale-sensitive layers (App. M, O: the transformer runs), in place: reparameterise
    ``module.<name>`` (``(rows, …)``) as ``W = g ⊙ ω/‖ω‖`` row by row, through ``torch.nn.utils.parametrize``. Each
    row of ``ω`` is then *exactly* scale-invariant (``L(sω) = L(ω)`` for ``s > 0``, no normalisation ``ε``), so its
    gradient is orthogonal to it and the rotational-equilibrium analysis applies without the scale-sensitive
    correction; the gain ``g`` (``(rows,)``, started at the rows' norms, so the function is unchanged) learns the
    magnitude. Give the rows of ``ω`` to :class:`RotationalWrapper` (:func:`rows`) and ``g`` to a param group without
    weight decay, as [K] does. Returns ``(ω, g)``. A zero row has no direction and is refused."""
    weight = getattr(module, name)
    if weight.dim() < 2:
        raise GaugeError("rotational", name, f"a learnable gain needs a weight with rows, got shape "
                         f"{tuple(weight.shape)}")
    zero = (weight.detach().reshape(weight.shape[0], -1).norm(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise GaugeError("rotational", name, f"rows {zero} are zero: a learnable gain needs a direction per row")
    torch.nn.utils.parametrize.register_parametrization(module, name, _Gain(), unsafe=True)
    orig = module.parametrizations[name]
    return orig.original0, orig.original1


class RotationMeter:
    """Per-vector norm, update size and angle of each step, for :func:`equilibrium`'s comparison ([K] Eq. 4–5).

    ``vectors``: ``(parameter, view)`` pairs (:func:`rows`, :func:`rotational_vectors`). Call :meth:`before` and
    :meth:`after` around ``optimizer.step()``; :meth:`summary` averages the records from step ``start``."""

    def __init__(self, vectors: Sequence[tuple[Tensor, Callable[[Tensor], Tensor]]]):
        self.vectors = list(vectors)
        self.records: list[dict[str, Tensor]] = []
        self._prev: list[Tensor] | None = None

    def before(self) -> None:
        self._prev = [view(p.detach()).double().clone() for p, view in self.vectors]

    def after(self) -> None:
        if self._prev is None:
            raise RuntimeError("RotationMeter.after() without before()")
        norms, updates, angles = [], [], []
        for (p, view), old in zip(self.vectors, self._prev):
            new = view(p.detach()).double()
            cos = (old * new).sum(1) / (old.norm(dim=1) * new.norm(dim=1))
            norms.append(new.norm(dim=1))
            updates.append((new - old).norm(dim=1))
            angles.append(torch.arccos(cos.clamp(-1, 1)))
        self.records.append({"norm": torch.cat(norms), "update": torch.cat(updates), "angle": torch.cat(angles)})
        self._prev = None

    def summary(self, start: int = 0) -> dict[str, Tensor]:
        """Per vector, the mean over the steps from ``start`` of the norm, the RMS update ``√E‖Δω‖²`` and the
        angle; each ``(vectors,)`` float64."""
        recs = self.records[start:]
        if not recs:
            raise ValueError(f"no records from step {start} ({len(self.records)} recorded)")
        stack = {k: torch.stack([r[k] for r in recs]) for k in recs[0]}
        return {"norm": stack["norm"].mean(0), "rms_update": stack["update"].pow(2).mean(0).sqrt(),
                "angle": stack["angle"].mean(0)}


class RotationalWrapper(torch.optim.Optimizer):
    """[K]'s Rotational Wrapper (App. M, Algorithm 1) around an inner ``torch.optim`` optimizer.

    Per rotational vector ``ω`` (``vectors``: ``(parameter, view)`` pairs) with norm ``n`` frozen at the start: the
    inner optimizer's gradient update ``Δ_g ω`` (its step with weight decay off for these parameters, measured as
    the change it makes) is divided by its learning rate, projected orthogonal to ``ω`` (the radial part is the
    vertical direction of ``ω``'s scale gauge), normalised by a running RMS ``ν ← βν + (1−β)‖Δ‖²`` (bias-corrected),
    and applied as ``ω ← ω + η̂_r n Δ / √(ν̂ + ε)``; then ``ω ← n (ω − mean ω) / ‖ω − mean ω‖`` (``center=True``) or
    ``n ω / ‖ω‖``. No weight decay is applied to rotational vectors. Every other parameter takes the inner
    optimizer's own update, decay included. The rotational vectors' parameters must sit in param groups of their
    own (the usual decay / no-decay split), since their decay is switched off for the inner step.

    ``eta_r``: the angular update per step; by default :func:`equilibrium`'s for ``inner_kind`` (``"adamw"``,
    ``"sgdm"`` or ``"lion"``) with the group's current (scheduled) ``lr`` and ``weight_decay``. State per vector:
    two scalars (``ν`` and ``n``) and the count of its updates (``ν``'s bias correction: a vector skipped at ``lr = 0``
    or without a gradient is not counted), saved by :meth:`state_dict` under ``"rotational"`` next to the inner
    optimizer's ``state`` and ``param_groups``. ``center=True`` is the seed's default (its weight-standardised
    layers ignore a row's mean); on a layer that does not, the first step's centring changes the function, and
    ``center=False`` keeps only the scale fixed.
    """

    def __init__(self, inner: torch.optim.Optimizer, vectors: Sequence[tuple[Tensor, Callable[[Tensor], Tensor]]],
                 eta_r: float | None = None, inner_kind: str = "adamw", beta: float = 0.99, eps: float = 1e-8,
                 center: bool = True):
        if not 0 <= beta < 1:
            raise ValueError(f"beta={beta}: choose 0 <= beta < 1")
        if eta_r is None and inner_kind not in OPTIMIZERS:
            raise ValueError(f"inner_kind={inner_kind!r}: choose from {OPTIMIZERS}, or give eta_r")
        self.inner, self.vectors = inner, list(vectors)
        self.eta_r, self.inner_kind, self.beta, self.eps, self.center = eta_r, inner_kind, beta, eps, center
        group_of = self._groups()
        mine = {id(p) for p, _ in self.vectors}
        for p, _ in self.vectors:
            if id(p) not in group_of:
                raise GaugeError("rotational", f"tensor {tuple(p.shape)}", "is a rotational vector but not a "
                                 "parameter of the inner optimizer")
            if any(id(q) not in mine for q in group_of[id(p)]["params"]):
                raise GaugeError("rotational", f"tensor {tuple(p.shape)}", "shares a param group with parameters "
                                 "that are not rotational vectors; put the rotational vectors in groups of their own")
        self._group_of = group_of
        # torch.optim.Optimizer's bookkeeping (hooks, schedulers' patching), then the inner optimizer's groups and
        # state themselves: the wrapper has no parameters or state of its own beyond ``rv``
        self._ready = False
        super().__init__([p for g in inner.param_groups for p in g["params"]], dict(inner.defaults))
        self.param_groups, self.defaults, self.state = inner.param_groups, inner.defaults, inner.state
        self._ready = True
        self.rv = [{"norm": view(p.detach()).norm(dim=1).clone(),
                    "nu": torch.zeros(view(p.detach()).shape[0], dtype=p.dtype, device=p.device),
                    "count": torch.zeros((), dtype=torch.int64)}
                   for p, view in self.vectors]

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the inner optimizer (its parameters are not rotational vectors)."""
        if not self._ready:  # (torch.optim.Optimizer.__init__ adds the initial groups: they are the inner's)
            return
        self.inner.add_param_group(param_group)
        self._group_of = self._groups()

    def _groups(self) -> dict[int, dict]:
        """``id(parameter) →`` its inner param group."""
        return {id(p): g for g in self.inner.param_groups for p in g["params"]}

    def angular_update(self, group: dict) -> float:
        """``η̂_r`` for a param group: ``eta_r``, or :func:`equilibrium`'s with the group's ``lr`` and decay."""
        if self.eta_r is not None:
            return float(self.eta_r)
        lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
        if lr == 0:
            return 0.0
        if wd <= 0:
            raise GaugeError("rotational", "eta_r", "the default angular update needs the inner optimizer's "
                             "weight_decay > 0 for its rotational vectors (the equilibrium is set by it); give eta_r")
        kw = {"betas": group["betas"]} if "betas" in group else {"momentum": group.get("momentum", 0.9)}
        return equilibrium(self.inner_kind, lr, wd, 1, **kw).angular_update

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        live = [k for k, (p, _) in enumerate(self.vectors) if p.grad is not None]
        saved = {k: self.vectors[k][0].detach().clone() for k in live}
        groups = {id(self._group_of[id(self.vectors[k][0])]): self._group_of[id(self.vectors[k][0])] for k in live}
        decays = {key: g.get("weight_decay", 0.0) for key, g in groups.items()}
        eta_r = {key: self.angular_update(g) for key, g in groups.items()}  # (before the decay is switched off)
        try:
            for g in groups.values():
                g["weight_decay"] = 0.0
            self.inner.step()
        finally:
            for key, g in groups.items():
                g["weight_decay"] = decays[key]
        for k in live:
            p, view = self.vectors[k]
            group = self._group_of[id(p)]
            lr, st, old = float(group["lr"]), self.rv[k], view(saved[k])
            if lr == 0:
                p.copy_(saved[k])
                continue
            st["count"] += 1
            delta = (view(p.detach()) - old) / lr
            delta = delta - ((delta * old).sum(1, keepdim=True) / (old * old).sum(1, keepdim=True)) * old
            st["nu"].mul_(self.beta).add_((delta * delta).sum(1), alpha=1 - self.beta)
            nu_hat = st["nu"] / (1 - self.beta ** int(st["count"]))
            new = old + (eta_r[id(group)] * st["norm"] / (nu_hat + self.eps).sqrt())[:, None] * delta
            if self.center:
                new = new - new.mean(1, keepdim=True)
            view(p).copy_(st["norm"][:, None] * new / new.norm(dim=1, keepdim=True))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The inner optimizer's ``state_dict`` (``state``, ``param_groups``) plus ``"rotational"``: per vector its
        ``norm``, ``nu`` and ``count`` (copies)."""
        out = self.inner.state_dict()
        out["rotational"] = [{k: v.clone() for k, v in st.items()} for st in self.rv]
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("rotational")
        if saved is None or len(saved) != len(self.rv):
            raise GaugeError("checkpoint", "RotationalWrapper", f"{0 if saved is None else len(saved)} rotational "
                             f"vectors saved, {len(self.rv)} here")
        for st, one in zip(self.rv, saved):
            for key in st:
                if key not in one or one[key].shape != st[key].shape:
                    got = tuple(one[key].shape) if key in one else None
                    raise GaugeError("checkpoint", "RotationalWrapper", f"'{key}' missing or of shape {got}, "
                                     f"expected {tuple(st[key].shape)}")
        self.inner.load_state_dict({k: v for k, v in state_dict.items() if k != "rotational"})
        self.param_groups, self.state = self.inner.param_groups, self.inner.state
        self._group_of = self._groups()
        self.rv = [{k: v.clone() for k, v in one.items()} for one in saved]
