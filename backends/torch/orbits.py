"""Orbit families bound to tensors: frames, group action, covector rule, vertical coordinates.

A :class:`BoundFamily` is a generated :class:`~gaugemath.backends._family.Family` whose roles are
bound to tensors (by index into a list of work buffers). It evaluates the generated formulas
on per-unit statistics and does the tensor plumbing the formulas leave open: reductions over a
slice, broadcasting a per-unit scalar over its slice, rotating a pair of rows.

Shapes. A ``rows`` slice of a ``(n, m)`` (or ``(n,)``) tensor is row ``k``; a ``cols`` slice of an
``(m, n)`` tensor is column ``k``; ``all`` is the whole tensor (one unit). A ``plane`` family
pairs rows ``(2k, 2k+1)``; a ``head`` family owns rows ``h·d_head … (h+1)·d_head - 1``.
Per-unit coefficient vectors have shape ``(units,)``; for heads, skew ``(heads, d_head, d_head)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from .._family import Family, Slice

_ENTRY = re.compile(r"^(?P<role>.+)_r(?P<r>[01])_c(?P<c>\d+)$")

#: Pivot hysteresis of the plane frame: the anchor column is kept while its plane norm² is at least
#: ``1/PIVOT_HOLD`` of the largest (a factor 2 in norm), see :meth:`BoundFamily.pivot`.
PIVOT_HOLD = 4.0


def _reduce(t: Tensor, axis: str) -> Tensor:
    """Per-unit sum over the slice: ``(units,)``. A 3-D ``cols`` tensor is a layer stack
    ``(L, m, n)`` (see :mod:`.batching`): units ``L·n``."""
    if axis == "rows":
        return t.reshape(t.shape[0], -1).sum(1)
    if axis == "cols":
        return t.sum(0) if t.dim() == 2 else t.sum(1).reshape(-1)
    return t.sum().reshape(1)


def _bcast(v: Tensor, t: Tensor, axis: str) -> Tensor:
    """Per-unit ``v`` shaped to broadcast against ``t`` over the slices."""
    if axis == "rows":
        return v.reshape(-1, *([1] * (t.dim() - 1)))
    if axis == "cols":
        return v.reshape(1, -1) if t.dim() == 2 else v.reshape(t.shape[0], 1, t.shape[2])
    return v.reshape(())


def _slice_len(t: Tensor, axis: str) -> int:
    if axis == "rows":
        return t.numel() // t.shape[0]
    if axis == "cols":
        return t.shape[-2]
    return t.numel()


def _units(t: Tensor, axis: str) -> int:
    if axis == "cols":
        return t.shape[1] if t.dim() == 2 else t.shape[0] * t.shape[2]
    return t.shape[0] if axis == "rows" else 1


def _pairs(t: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``2k`` and ``2k+1``: two ``(planes, cols)`` views."""
    v = t.reshape(t.shape[0] // 2, 2, -1)
    return v[:, 0], v[:, 1]


@dataclass
class BoundFamily:
    """A generated family with its roles bound to tensor indices.

    ``roles[role]`` lists indices into the optimizer's bound-tensor list; ``name`` is for
    messages (e.g. ``"blocks.0.mlp: swiglu_rescale.anchor"``); ``d_head`` for head families.
    """

    family: Family
    name: str
    roles: dict[str, list[int]]
    units: int
    d_head: int = 0

    @property
    def kind(self) -> str:
        return self.family.kind

    def members(self) -> list[tuple[Slice, int]]:
        return [(s, i) for s in self.family.slices for i in self.roles.get(s.role, [])]

    # ---------------------------------------------------------------- statistics
    def _stats(self, names: list[str], theta: list[Tensor], u: list[Tensor] | None = None,
               pivot: Tensor | None = None) -> dict[str, Tensor]:
        """The generated formulas' named per-unit statistics ``(units,)``: plane-frame entries (in the
        anchor columns ``pivot``, see :meth:`pivot`), ``n_R`` (entries per unit over all tensors of role
        ``R``), ``mean_R = sum_R / n_R`` and the sums of :meth:`_role_sum`."""
        out: dict[str, Tensor] = {}
        cache: dict = {}
        for name in names:
            entry = self._entry(name, theta, pivot)
            if entry is not None:
                out[name] = entry
                continue
            prefix, role = name.split("_", 1)
            s, idx = self.family.slice(role), self.roles[role]
            if prefix in ("n", "mean"):
                n = sum(_slice_len(theta[i], s.axis) for i in idx)
                if prefix == "n":
                    t = theta[idx[0]]
                    out[name] = t.new_full((_units(t, s.axis),), float(n))
                else:
                    out[name] = self._role_sum("sum", role, theta, u, cache) / n
            else:
                out[name] = self._role_sum(prefix, role, theta, u, cache)
        return out

    def _role_sum(self, prefix: str, role: str, theta: list[Tensor], u: list[Tensor] | None, cache: dict) -> Tensor:
        """Per-unit ``Σ`` over the slices of every tensor of ``role`` of ``θ²`` (``sq``; planes: both
        rows), ``θ`` (``sum``), ``θu`` (``dot``), ``u`` (``usum``) or ``θ₀u₁ − θ₁u₀`` (``cross``),
        ``(units,)``. The hook the kernel path overrides (``cache``: per :meth:`_stats` call)."""
        s = self.family.slice(role)
        total = None
        for i in self.roles[role]:
            t = theta[i]
            if prefix == "sq":
                v = _pair_sum(t * t) if self.kind == "plane" else _reduce(t * t, s.axis)
            elif prefix == "sum":
                v = _reduce(t, s.axis)
            elif prefix == "dot":
                v = _reduce(t * u[i], s.axis)
            elif prefix == "usum":
                v = _reduce(u[i], s.axis)
            elif prefix == "cross":
                a0, a1 = _pairs(t)
                b0, b1 = _pairs(u[i])
                v = (a0 * b1 - a1 * b0).sum(1)
            else:  # pragma: no cover - generated names are fixed
                raise KeyError(f"{prefix}_{role}")
            total = v if total is None else total + v
        return total

    def _entry(self, name: str, theta: list[Tensor], pivot: Tensor | None = None) -> Tensor | None:
        """The plane-frame statistic ``R_r{0,1}_c{J}`` (see :meth:`_anchor_entries`); ``None`` for a sum."""
        m = _ENTRY.match(name)
        if not (m and m.group("role") in self.roles):
            return None
        t = theta[self.roles[m.group("role")][0]]
        return self._anchor_entries(t, int(m.group("c")), pivot)[int(m.group("r"))]

    def _plane_norms(self, theta: list[Tensor]) -> Tensor:
        """``‖(t[2k, j], t[2k+1, j])‖²`` per plane ``k`` and column ``j`` of the anchor tensor, ``(planes, cols)``:
        unchanged by the plane's rotations."""
        r0, r1 = _pairs(theta[self.roles[self.family.slices[0].role][0]])
        return r0 * r0 + r1 * r1

    def pivot(self, theta: list[Tensor], held: Tensor | None = None) -> Tensor:
        """The anchor column ``j_k`` of each plane, ``(planes,)`` int64: the column of largest plane norm,
        or, with hysteresis, ``held`` (last step's, ``-1``: none) while its norm² is at least
        ``1/PIVOT_HOLD`` of the largest.

        Plane norms are rotation-invariant, so ``j`` is a function of the orbit's history of invariants:
        runs A and B of the protocol hold and switch on the same steps and the frame stays equivariant
        (any column gives a proved frame, see :meth:`_anchor_entries`). Without hysteresis the argmax
        switches between near-equal columns on most steps, and every switch moves the canonical
        coordinates (and the moments kept in them) by the angle between the two columns."""
        norms = self._plane_norms(theta)
        best = norms.argmax(1)
        if held is None:
            return best
        valid = (held >= 0) & (held < norms.shape[1])
        kept = torch.gather(norms, 1, torch.where(valid, held, best)[:, None])[:, 0]
        top = torch.gather(norms, 1, best[:, None])[:, 0]
        return torch.where(valid & (kept > 0) & (PIVOT_HOLD * kept >= top), held, best)

    @staticmethod
    def _anchor_entries(t: Tensor, c: int, pivot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Entries ``(t[2k, j_k], t[2k+1, j_k])`` of the plane's anchor column ``j_k``.

        The derived plane frame reads column ``c = 0`` of the plane rows; any column works (the
        proof is the same with the columns relabelled), and the column of largest plane norm is a
        rotation-invariant choice that keeps the angle well conditioned. ``c`` counts columns in
        that order (``0``: the largest, or ``pivot``: the columns :meth:`pivot` chose).
        """
        r0, r1 = _pairs(t)
        if c == 0 and pivot is not None:
            j = pivot[:, None]
        elif c == 0:
            j = (r0 * r0 + r1 * r1).argmax(1, keepdim=True)
        else:
            j = torch.argsort(r0 * r0 + r1 * r1, dim=1, descending=True, stable=True)[:, c : c + 1]
        return torch.gather(r0, 1, j)[:, 0], torch.gather(r1, 1, j)[:, 0]

    # ---------------------------------------------------------------- frame and action
    def frame(self, theta: list[Tensor], pivot: Tensor | None = None):
        """``h(θ)``: per-unit scale ``α``, translation ``v``, plane ``(c, s)`` (anchored in the columns
        ``pivot``, default: the largest) or head matrices."""
        if self.kind == "head":
            return self._head_frame(theta)
        f = self.family.frame
        return f(**self._stats(self.family.stats["frame"], theta, pivot=pivot))

    def degenerate(self, theta: list[Tensor], h, pivot: Tensor | None = None) -> Tensor:
        """Units whose canonical frame is undefined at ``θ``, ``(units,)`` bool, decided by quantities
        the group leaves unchanged: a scale unit whose slices on one side are all zero (``Σ`` over the
        roles of exponent ``+1`` or of ``−1``: zero at ``θ`` iff zero at ``g·θ``), a RoPE plane whose
        anchor rows are zero, a head whose rows do not span ``d_head`` dimensions (the pivoted
        Gram–Schmidt fails exactly then); and, for the rare point where the frame's own arithmetic
        overflows, a non-finite or zero frame. Seed 002's symmetry-induced collapse drives training to
        exactly these points (weight decay zeroes rescale-symmetric units)."""
        if self.kind == "translate":
            return torch.zeros(self.units, dtype=torch.bool, device=theta[0].device)
        if self.kind == "head":  # rank < d_head: M = ΘΘᵀ's eigenvalues (rotation-invariant) reach round-off
            th = self._head_rows(theta)
            lam = torch.linalg.eigvalsh(th @ th.transpose(1, 2))
            floor = (th.shape[-1] + self.d_head) * torch.finfo(th.dtype).eps * lam[:, -1]
            return (lam[:, 0] <= floor) | ~torch.isfinite(h).reshape(self.units, -1).all(1)
        if self.kind == "plane":
            a0, a1 = self._anchor_entries(theta[self.roles[self.family.slices[0].role][0]], 0, pivot)
            c, sn = h
            return ((a0 == 0) & (a1 == 0)) | ~torch.isfinite(c) | ~torch.isfinite(sn)
        bad = ~torch.isfinite(h) | (h == 0)
        for v in self.side_sums(theta).values():
            bad = bad | (v == 0)
        return bad

    def side_sums(self, theta: list[Tensor]) -> dict[int, Tensor]:
        """Per unit ``Σ θ²`` over the slices of each sign of exponent (scale families), ``{±1: (units,)}``:
        the quantities :meth:`degenerate` and the jointly balanced frame read (each side summed on its own,
        not recovered from ``Γ ± Xᵀθ``, which loses the smaller side to cancellation)."""
        sides: dict[int, Tensor] = {}
        for s, i in self.members():
            t = theta[i]
            v = _reduce(t * t, s.axis)
            key = 1 if s.exponent > 0 else -1
            sides[key] = v if key not in sides else sides[key] + v
        return sides

    def identity_where(self, mask: Tensor, h):
        """The frame with the identity element on the ``mask`` ed units."""
        if self.kind == "scale":
            return torch.where(mask, torch.ones_like(h), h)
        if self.kind == "translate":
            return h
        if self.kind == "plane":
            c, sn = h
            return torch.where(mask, torch.ones_like(c), c), torch.where(mask, torch.zeros_like(sn), sn)
        eye = torch.eye(self.d_head, dtype=h.dtype, device=h.device).expand_as(h)
        return torch.where(mask[:, None, None], eye, h)

    @staticmethod
    def unit_mask(mask: Tensor, value: Tensor) -> Tensor:
        """``mask`` broadcast against a per-unit value ``(units, …)``."""
        return mask.reshape(mask.shape[0], *([1] * (value.dim() - 1)))

    def act(self, h, ts: list[Tensor], inverse: bool = False, covector: bool = False) -> None:
        """In place: ``t ← h·t`` (``inverse``: ``h⁻¹·t``; ``covector``: ``D(h)^{-T} t``)."""
        for s, i in self.members():
            t = ts[i]
            if self.kind == "scale":
                e = s.exponent * (-1 if inverse else 1) * (-1 if covector else 1)
                t.mul_(_bcast(h if e > 0 else 1 / h, t, s.axis))
            elif self.kind == "translate":
                if not covector:  # D(h) = I for a translation
                    t.add_(_bcast(-h if inverse else h, t, s.axis))
            elif self.kind == "plane":  # orthogonal: D^{-T} = D
                c, sn = h
                sn = -sn if inverse else sn
                r0, r1 = _pairs(t)
                a0, a1 = r0.clone(), r1.clone()
                r0.copy_(c[:, None] * a0 + sn[:, None] * a1)
                r1.copy_(c[:, None] * a1 - sn[:, None] * a0)
            else:  # head: rows of head j ← h_j · rows (h orthogonal)
                v = t.reshape(self.units, self.d_head, -1)
                m = h.transpose(1, 2) if inverse else h
                v.copy_(torch.bmm(m, v))

    def act_pair(self, h, theta: list[Tensor], grad: list[Tensor]) -> None:
        """In place: ``θ ← h·θ`` and ``g ← D(h)^{-T} g`` (step 1 of DDCAdam)."""
        self.act(h, theta)
        self.act(h, grad, covector=True)

    def _head_frame(self, theta: list[Tensor]) -> Tensor:
        """Gram–Schmidt frame per head with invariant column pivoting: ``h = Qᵀ`` where
        ``A_π = QR`` (``diag R > 0``), ``A = [W_Q | W_K]`` (head rows) and ``π`` picks, at each step,
        the column of largest residual norm.

        For a fixed ``π`` this is the frame ``gaugemath.catalogue`` derives and proves
        (``h(S·θ) = h(θ)S⁻¹``); residual norms are rotation-invariant, so runs A and B pick the
        same ``π`` and the frame stays equivariant, while pivoting keeps it well conditioned (the
        first ``d_head`` columns alone can be nearly dependent).
        """
        a = torch.cat([theta[i].reshape(self.units, self.d_head, -1) for _, i in self.members()], dim=2)
        res = a.clone()  # (heads, d, cols)
        qs = []
        for _ in range(self.d_head):
            norms = (res * res).sum(1)  # (heads, cols)
            j = norms.argmax(1)
            col = torch.gather(res, 2, j[:, None, None].expand(-1, self.d_head, 1))[:, :, 0]
            q = col / torch.linalg.vector_norm(col, dim=1, keepdim=True)
            for prev in qs:  # re-orthogonalise (twice is enough)
                q = q - prev * (prev * q).sum(1, keepdim=True)
            q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
            qs.append(q)
            res = res - q[:, :, None] * (q[:, :, None] * res).sum(1, keepdim=True)
        return torch.stack(qs, dim=1)  # rows are q_i: h = Qᵀ

    # ---------------------------------------------------------------- vertical directions
    def gram(self, theta: list[Tensor]) -> Tensor:
        """``Γ_kk = ‖X_k(θ)‖²`` (``(units,)``); for heads ``M = ΘΘᵀ`` per head ``(heads, d, d)``."""
        if self.kind == "head":
            th = self._head_rows(theta)
            return th @ th.transpose(1, 2)
        return self.family.gram(**self._stats(self.family.stats["gram"], theta))

    def gram_and_self_coords(self, theta: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(gram(θ), coords(θ, θ))`` from one set of reductions: for scale families
        ``dot_R(θ, θ) = Σθ·θ`` *is* ``sq_R`` (the same products, summed the same way), for planes
        ``cross_R(θ, θ) = Σ θ₀θ₁ − θ₁θ₀ = 0`` exactly; the results are bit-identical to the two calls."""
        if self.kind not in ("scale", "plane"):
            return self.gram(theta), self.coords(theta, theta)
        gram_names, coord_names = self.family.stats["gram"], self.family.stats["coords"]
        sq = self._stats(sorted(set(gram_names) | {"sq_" + n.split("_", 1)[1] for n in coord_names}), theta)
        ref = sq[next(iter(sq))]
        cs = {n: sq["sq_" + n.split("_", 1)[1]] if n.startswith("dot_") else torch.zeros_like(ref)
              for n in coord_names}
        return self._eval("gram", {n: sq[n] for n in gram_names}), self._eval("coords", cs)

    def _eval(self, which: str, stats: dict[str, Tensor]) -> Tensor:
        """A generated formula (``"gram"`` or ``"coords"``) on named statistics."""
        return getattr(self.family, which)(**stats)

    def coords(self, theta: list[Tensor], u: list[Tensor]) -> Tensor:
        """``⟨X_k(θ), u⟩`` per unit; for heads the skew ``C = UΘᵀ − ΘUᵀ`` per head."""
        if self.kind == "head":
            th, uu = self._head_rows(theta), self._head_rows(u)
            c = uu @ th.transpose(1, 2)
            return c - c.transpose(1, 2)
        return self.family.coords(**self._stats(self.family.stats["coords"], theta, u))

    def floor_scale(self, theta: list[Tensor], rtol: float) -> float:
        """``max((n + 8) ε, rtol)``: the relative size of the round-off floor (``n`` the slice length)."""
        eps = torch.finfo(theta[0].dtype).eps
        if self.kind == "head":
            return max((self._head_rows(theta).shape[-1] + 8) * eps, rtol)
        length = sum(theta[i].numel() // max(self.units, 1) for _, i in self.members())
        return max((length + 8) * eps, rtol)

    def noise_floor(self, theta: list[Tensor], u: list[Tensor], rtol: float) -> Tensor:
        """Below this, :meth:`coords` cannot be told from zero: ``max((n + 8) ε, rtol) |X|ᵀ|u|``.

        ``(n + 8) ε |X|ᵀ|u|`` bounds the rounding of the dot product (``γ_n |x|ᵀ|y|``, ``n`` the
        slice length) and of the canonical coordinates; ``rtol`` (``√ε`` by default in
        :class:`DDCAdam`) covers the rounding of the backward pass, which no bound here sees. For a
        gauge-invariant loss the vertical gradient is exactly zero, and what is computed is
        round-off that must not become a step.
        """
        if self.kind == "head":
            th, uu = self._head_rows(theta).abs(), self._head_rows(u).abs()
            c = uu @ th.transpose(1, 2)
            return self.floor_scale(theta, rtol) * (c + c.transpose(1, 2))
        return self.floor_scale(theta, rtol) * self._abs_coords(theta, u)

    def _abs_coords(self, theta: list[Tensor], u: list[Tensor]) -> Tensor:
        """``(|X|ᵀ|u|)_k``: the coordinate's sum with every term replaced by its absolute value."""
        total = None
        for s, i in self.members():
            t, v = theta[i], u[i]
            if self.kind == "scale":  # |θu| = |θ||u| exactly
                w = abs(self._coefficient("dot", s.role)) * _reduce((t * v).abs_(), s.axis)
            elif self.kind == "translate":
                w = abs(self._coefficient("usum", s.role)) * _reduce(v.abs(), s.axis)
            else:
                a0, a1 = _pairs(t)
                b0, b1 = _pairs(v)
                w = abs(self._coefficient("cross", s.role)) * ((a0 * b1).abs_() + (a1 * b0).abs_()).sum(1)
            total = w if total is None else total + w
        return total

    def vertical_rhs(self, theta: list[Tensor], u: list[Tensor], rtol: float) -> Tensor:
        """:meth:`coords` with every coordinate below :meth:`noise_floor` set to exactly zero.

        For scale families (coordinates ``Σ_R c_R Σ θu`` over the roles' slices) each product ``θu`` is
        formed once and serves both the coordinate and, made absolute in place, the floor ``|X|ᵀ|u|``: the
        same operations in the same order as :meth:`coords` and :meth:`noise_floor` (bit-identical), one
        full-size product per member tensor fewer."""
        names = self.family.stats.get("coords", ())
        if self.kind != "scale" or not all(n.startswith("dot_") for n in names):
            c = self.coords(theta, u)
            return torch.where(c.abs() <= self.noise_floor(theta, u, rtol), 0.0, c)
        dots: dict[str, Tensor] = {}
        floor = None
        for s, i in self.members():
            p = theta[i] * u[i]
            v = _reduce(p, s.axis)
            key = "dot_" + s.role
            dots[key] = v if key not in dots else dots[key] + v
            w = abs(self._coefficient("dot", s.role)) * _reduce(p.abs_(), s.axis)
            floor = w if floor is None else floor + w
        c = self.family.coords(**{n: dots[n] for n in names})
        return torch.where(c.abs() <= self.floor_scale(theta, rtol) * floor, 0.0, c)

    def _head_rows(self, ts: list[Tensor]) -> Tensor:
        return torch.cat([ts[i].reshape(self.units, self.d_head, -1) for _, i in self.members()], dim=2)

    def prime(self) -> None:
        """Fill the :meth:`_coefficient` cache for every statistic of the generated ``coords`` (eagerly:
        under ``torch.compile`` a cache filled during tracing is a guard that fails the next step)."""
        for name in self.family.stats.get("coords", ()):
            prefix, role = name.split("_", 1)
            self._coefficient(prefix, role)
        for s in self.family.slices:
            for prefix in ("dot", "usum", "cross"):
                self._coefficient(prefix, s.role)

    def _coefficient(self, prefix: str, role: str) -> float:
        """Coefficient of the statistic ``prefix_role`` in the generated (linear) ``coords``,
        read off by evaluating the generated function on Python floats (cached)."""
        cache = self.__dict__.setdefault("_coefficients", {})
        key = f"{prefix}_{role}"
        if key not in cache:
            names = self.family.stats["coords"]
            cache[key] = float(self.family.coords(**{n: float(n == key) for n in names})) if key in names else 0.0
        return cache[key]

    def lift(self, coef: Tensor, theta: list[Tensor], out: list[Tensor], alpha: float = 1.0) -> None:
        """In place ``out += alpha · Σ_k coef_k X_k(θ)``: the adjoint of :meth:`coords`.

        For heads ``coef`` is the skew ``A`` per head and ``X_A(θ) = AΘ``.
        """
        if self.kind == "head":
            for _, i in self.members():
                t = theta[i].reshape(self.units, self.d_head, -1)
                out[i].reshape(self.units, self.d_head, -1).add_(torch.bmm(coef, t), alpha=alpha)
            return
        for s, i in self.members():
            t, o = theta[i], out[i]
            if self.kind == "scale":
                w = self._coefficient("dot", s.role) * coef
                o.addcmul_(_bcast(w, t, s.axis), t, value=alpha)  # one pass, no full-size temporary
            elif self.kind == "translate":
                w = self._coefficient("usum", s.role) * coef
                o.add_(_bcast(w, t, s.axis), alpha=alpha)
            else:  # plane: ⟨X, u⟩ = Σ θ₀u₁ − θ₁u₀ ⇒ X = (−θ₁, θ₀) on the pair
                w = (self._coefficient("cross", s.role) * coef)[:, None]
                a0, a1 = _pairs(t)
                o0, o1 = _pairs(o)
                o0.add_(-w * a1, alpha=alpha)
                o1.add_(w * a0, alpha=alpha)


def _pair_sum(t: Tensor) -> Tensor:
    """``Σ`` over rows ``2k, 2k+1`` and all columns: ``(planes,)``."""
    return t.reshape(t.shape[0] // 2, -1).sum(1)
