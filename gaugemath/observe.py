"""Training-time observables of the gauge structure (torch), logged to JSONL and CSV.

Per orbit family of a :class:`~gaugemath.backends.torch.Binding` (one gauge acting on one layer,
e.g. ``blocks.0.mlp: relu_rescale.balance``), with ``θ_F`` the tensors the family moves:

* **orbit drift** ``‖θ_F − h_F(θ)·θ_F‖ / ‖θ_F‖``: how far the family's own canonical frame moves
  ``θ``, i.e. the distance from the canonical slice along the orbit, relative to ``‖θ_F‖``.
* **Noether charges** ``Q_k(θ) = θᵀM_kθ + 2b_kᵀθ`` for the symmetric generators ``X_k(θ) = M_kθ + b_k``
  (scales and translations; rotations have none), evaluated from the *generated* vertical coordinates as
  ``Q_k = ⟨X_k(θ), θ⟩ + ⟨X_k(0), θ⟩`` — the formula the symbolic core prints for every catalogue gauge;
  logged as ``‖Q‖`` and the drift ``‖Q − Q₀‖ / ‖Q₀‖`` since the first observed step.
* **vertical fraction** of the update ``u = θ_{t+1} − θ_t``: ``‖P_V ũ‖ / ‖ũ‖`` in the invariant metric,
  i.e. at the canonical point ``θ̃_t`` where the metric is Euclidean (``ũ = h(θ_t)·θ_{t+1} − θ̃_t``),
  with ``P_V`` the full coupled projector of the binding; logged in total and per family (the norm of
  that family's component). DDCAdam's updates are horizontal (``≈ 0`` up to round-off); AdamW's are not.

Per weight matrix (2-D parameter) and per activation (the input of each ``nn.Linear`` on a fixed
``probe`` batch, flattened to ``(N, d_in)`` and centred): the smallest singular value ``σ_min``, the
effective rank ``exp H(σ/Σσ)`` (Roy & Vetterli 2007) and, for activations, the smallest eigenvalue
``λ_min`` and active volume ``log det⁺`` of the centred covariance ``C = AᵀA/N`` (``d_in × d_in``).

The **dead-direction rate** (:func:`dead_direction_rates`) is defined from Shirodkar, *Dead Directions:
Geometric Singular Learning* (arXiv 2606.05957, Thm. 2): along a trajectory approaching a singular set,
the directional Fisher curvature along a dead direction decays as ``uᵀF(θ(t))u = Θ(t^{2(k−1)})``, ``k`` the
KL order, so the smallest-eigenvalue decay slope reads ``k``. *Dead-Direction Signatures*
(arXiv 2606.21158) read the same rate cheaply on activation Gram matrices. We read, per observable
series ``λ(t)`` (activation ``λ_min`` per layer), the rate ``r = −d log λ / d log t`` by least squares over
the second half of the logged steps, and call the rate *read* when the fit explains the series
(``R² ≥ 0.8``) and the decay is real (``r ≥ 0.1``). These thresholds are ours, not the paper's.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gaugemath.backends.torch import Binding
from gaugemath.backends.torch.projection import Projector

#: Relative eigenvalue floor of the active volume ``log det⁺``: eigenvalues below ``ACTIVE_RTOL · λ_max`` are dead.
ACTIVE_RTOL = 1e-10


# ------------------------------------------------------------------------------------------ spectra
def effective_rank(s: Tensor) -> float:
    """``exp H(p)``, ``p = s/Σs`` (singular values ``s``, shape ``(r,)``); 0 for a zero matrix."""
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def matrix_spectrum(w: Tensor) -> dict[str, float]:
    """``σ_min``, ``σ_max`` and effective rank of ``w`` reshaped to ``(rows, −1)``."""
    s = torch.linalg.svdvals(w.detach().reshape(w.shape[0], -1).double())
    return {"sigma_min": float(s[-1]), "sigma_max": float(s[0]), "erank": effective_rank(s)}


def activation_spectrum(a: Tensor) -> dict[str, float]:
    """Spectrum of the centred activations ``a``: ``(N, d)`` (``N`` samples of a ``d``-vector).

    ``C = (a − ā)ᵀ(a − ā)/N``: ``λ_min(C)``, ``log det⁺ C`` over eigenvalues above ``ACTIVE_RTOL·λ_max``,
    and ``σ_min``/effective rank of the centred ``a``."""
    a = a.detach().reshape(-1, a.shape[-1]).double()
    a = a - a.mean(0, keepdim=True)
    lam = torch.linalg.eigvalsh(a.T @ a / a.shape[0]).clamp_min(0)
    active = lam[lam > ACTIVE_RTOL * lam[-1]]
    s = lam.flip(0).sqrt()
    return {"lambda_min": float(lam[0]), "logdet_plus": float(active.log().sum()) if len(active) else 0.0,
            "sigma_min": float(s[-1]), "erank": effective_rank(s)}


# ------------------------------------------------------------------------------------------ gauge observables
def bound_tensors(binding: Binding | None) -> list[Tensor]:
    """The binding's tensors in binding order, detached float64 copies (empty without a binding)."""
    return [p.detach().double().clone() for _, p in binding.params] if binding is not None else []


def _norm(ts: list[Tensor]) -> float:
    return math.sqrt(sum(float((t * t).sum()) for t in ts))


def charges(binding: Binding, theta: list[Tensor]) -> dict[str, Tensor]:
    """Noether charges ``Q_k = ⟨X_k(θ), θ⟩ + ⟨X_k(0), θ⟩`` per scale/translate family, ``(units,)``.

    ``theta``: the binding's tensors (binding order), any float dtype."""
    zeros = [torch.zeros_like(t) for t in theta]
    return {f.name: f.coords(theta, theta) + f.coords(zeros, theta)
            for f in binding.families if f.kind in ("scale", "translate")}


def orbit_drift(binding: Binding, theta: list[Tensor]) -> dict[str, float]:
    """``‖θ_F − h_F(θ)·θ_F‖ / ‖θ_F‖`` per family (each family's frame applied alone)."""
    out = {}
    for f in binding.families:
        idx = sorted({i for _, i in f.members()})
        moved = [t.clone() for t in theta]
        f.act(f.frame(theta), moved)
        out[f.name] = _norm([moved[i] - theta[i] for i in idx]) / max(_norm([theta[i] for i in idx]), 1e-300)
    return out


def vertical_parts(binding: Binding, before: list[Tensor], after: list[Tensor]) -> tuple[float, dict[str, float]]:
    """Vertical fraction ``‖P_V ũ‖/‖ũ‖`` of the update ``after − before`` in the invariant metric, and per
    family ``‖X_F a_F‖/‖ũ‖`` (its component). Tensors in binding order; computed in float64."""
    from gaugemath.backends.torch.check import canonical_point

    t0 = binding.entries(binding.to_work(before, torch.float64))
    t1 = binding.entries(binding.to_work(after, torch.float64))
    applied = canonical_point(binding, t0)  # the optimizer's composed frame of θ_t (the binding's ``frames``)
    for f, h in applied:  # … applied to θ_{t+1} too
        f.act(h, t1)
    fams = [f for f, _ in applied]
    n = len(binding.params)
    u = [b - a for a, b in zip(t0[:n], t1[:n])]
    size = _norm(u)
    if size == 0.0:
        return 0.0, {f.name: 0.0 for f in binding.families}
    u = binding.entries(u)
    names = binding.entry_names()
    projector = Projector(fams, names, [binding.layout.base(i) for i in range(len(names))],
                          balanced=binding.frames == "balanced")
    coef = projector.solve(projector.factor(t0), [f.coords(t0, u)[..., None] for f in fams])
    total = [torch.zeros_like(t) for t in t0[:n]]
    per_family = {}
    for f, c in zip(fams, coef):
        part = binding.entries([torch.zeros_like(t) for t in t0[:n]])
        f.lift(c[..., 0], t0, part)
        part = part[:n]
        per_family[f.name] = _norm(part) / size
        torch._foreach_add_(total, part)
    return _norm(total) / size, per_family


# ------------------------------------------------------------------------------------------ the hook
class Observer:
    """Records gauge, weight and activation observables around optimizer steps.

    >>> obs = Observer(model, binding, path="run/observables.jsonl", probe=x_probe, every=10)
    >>> for step in range(steps):
    ...     loss = model_loss(); opt.zero_grad(); loss.backward()
    ...     with obs.step(step, loss=loss.item()):
    ...         opt.step()
    >>> obs.close()                      # also writes run/observables.csv (one flat row per record)

    ``binding``: gauge observables for its families (``None``: weights/activations only).
    ``probe``: a batch fed through ``model`` (no grad) to read activation spectra at the inputs of
    every ``nn.Linear``; ``None`` skips activations. ``every``: observe one step in ``every``.
    ``records`` keeps every record in memory too.
    """

    def __init__(self, model: nn.Module, binding: Binding | None = None, *, path: str | Path | None = None,
                 probe: Any = None, every: int = 1, weights: bool = True):
        if every < 1:
            raise ValueError(f"every={every}: must be a positive integer")
        self.model, self.binding, self.probe, self.every, self.weights = model, binding, probe, every, weights
        self.path = Path(path) if path is not None else None
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w")
        self.records: list[dict[str, Any]] = []
        self._q0: dict[str, Tensor] | None = None

    @contextmanager
    def step(self, step: int, **scalars: float) -> Iterator[None]:
        """Wrap one optimizer step: snapshot ``θ_t`` before, record after (when ``step % every == 0``)."""
        if step % self.every:
            yield
            return
        before = bound_tensors(self.binding)
        yield
        self.record(step, before, **scalars)

    def record(self, step: int, before: list[Tensor] | None = None, **scalars: float) -> dict[str, Any]:
        """Observe the model now (``before``: the bound tensors before the last update, for the
        vertical fraction); append the record to memory and the JSONL file and return it."""
        rec: dict[str, Any] = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        if self.binding is not None and self.binding.families:
            theta = bound_tensors(self.binding)
            fams: dict[str, dict[str, float]] = {n: {} for n in (f.name for f in self.binding.families)}
            for name, value in orbit_drift(self.binding, theta).items():
                fams[name]["orbit_drift"] = value
            q = charges(self.binding, theta)
            if self._q0 is None:
                self._q0 = q
            for name, value in q.items():
                q0 = self._q0[name]
                fams[name]["charge_norm"] = float(value.norm())
                fams[name]["charge_drift"] = float((value - q0).norm() / q0.norm().clamp_min(1e-300))
            if before is not None:
                total, parts = vertical_parts(self.binding, before, theta)
                rec["vertical_fraction"] = total
                for name, value in parts.items():
                    fams[name]["vertical_fraction"] = value
            rec["families"] = fams
        if self.weights:
            rec["weights"] = {n: matrix_spectrum(p) for n, p in self.model.named_parameters() if p.dim() >= 2}
        if self.probe is not None:
            rec["activations"] = self._activations()
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
        return rec

    def _activations(self) -> dict[str, dict[str, float]]:
        seen: dict[str, Tensor] = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0]))
                 for name, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        try:
            with torch.no_grad():
                self.model(self.probe)
        finally:
            for h in hooks:
                h.remove()
        return {name: activation_spectrum(a) for name, a in seen.items()}

    def close(self) -> None:
        """Close the JSONL file and write the flat CSV next to it."""
        if self._file is not None:
            self._file.close()
            self._file = None
            write_csv(self.records, self.path.with_suffix(".csv"))


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"families": {"f": {"orbit_drift": x}}}`` → ``{"families/f/orbit_drift": x}``."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def write_csv(records: list[dict[str, Any]], path: str | Path) -> Path:
    """One flat row per record; the header is the union of keys in first-seen order."""
    rows = [flatten(r) for r in records]
    header = list(dict.fromkeys(k for r in rows for k in r))
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


# ------------------------------------------------------------------------------------------ dead-direction rate
def decay_rate(steps: list[float], values: list[float], *, r2_min: float = 0.8,
               rate_min: float = 0.1) -> dict[str, float | bool]:
    """``r = −d log λ / d log t`` by least squares over the second half of ``(steps, values)``.

    Returns ``rate``, ``r2`` and ``read`` (``r2 ≥ r2_min`` and ``rate ≥ rate_min``). Points with
    ``t ≤ 0`` or ``λ ≤ 0`` are dropped (``log`` undefined); fewer than 3 points: not read."""
    pts = [(math.log(t), math.log(v)) for t, v in zip(steps, values) if t > 0 and v > 0]
    pts = pts[len(pts) // 2:]
    if len(pts) < 3:
        return {"rate": float("nan"), "r2": float("nan"), "read": False}
    xs, ys = zip(*pts)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0:
        return {"rate": float("nan"), "r2": float("nan"), "read": False}
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    r2 = 1.0 if syy == 0 else slope * slope * sxx / syy
    return {"rate": -slope, "r2": r2, "read": bool(r2 >= r2_min and -slope >= rate_min)}


def dead_direction_rates(records: list[dict[str, Any]], *, key: str = "lambda_min", **fit: float) -> dict[str, dict]:
    """:func:`decay_rate` of ``activations/<layer>/<key>`` for every layer observed in ``records``."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        for layer, stats in r.get("activations", {}).items():
            s = series.setdefault(layer, ([], []))
            s[0].append(float(r["step"]))
            s[1].append(float(stats[key]))
    return {layer: decay_rate(t, v, **fit) for layer, (t, v) in series.items()}
