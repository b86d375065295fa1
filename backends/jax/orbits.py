"""Orbit families on JAX arrays: the functional twin of ``gaugemath.backends.torch.orbits``.

Same shapes and conventions (see that module): a family's roles are bound to indices into a list
of leaves; ``rows``/``cols``/``all`` slices; plane pairs ``(2k, 2k+1)``; heads of ``d_head`` rows.
Every method returns new arrays (no in-place updates), so everything traces under ``jax.jit``.
The element-wise formulas are the generated ones in ``_generated.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import jax.numpy as jnp

from .._family import Family, Slice

_ENTRY = re.compile(r"^(?P<role>.+)_r(?P<r>[01])_c(?P<c>\d+)$")

#: Pivot hysteresis of the plane frame (the torch twin's ``PIVOT_HOLD``): the anchor column is kept while its
#: plane norm² is at least ``1/PIVOT_HOLD`` of the largest.
PIVOT_HOLD = 4.0


def _reduce(t, axis: str):
    if axis == "rows":
        return t.reshape(t.shape[0], -1).sum(1)
    if axis == "cols":
        return t.sum(0)
    return t.sum().reshape(1)


def _bcast(v, t, axis: str):
    if axis == "rows":
        return v.reshape(-1, *([1] * (t.ndim - 1)))
    if axis == "cols":
        return v.reshape(1, -1)
    return v.reshape(())


def _slice_len(t, axis: str) -> int:
    if axis == "rows":
        return t.size // t.shape[0]
    if axis == "cols":
        return t.shape[0]
    return t.size


def _pairs(t):
    v = t.reshape(t.shape[0] // 2, 2, -1)
    return v[:, 0], v[:, 1]


def _unpairs(r0, r1, like):
    return jnp.stack([r0, r1], axis=1).reshape(like.shape)


@dataclass(frozen=True)
class JaxFamily:
    """A generated family with roles bound to leaf indices (see the torch ``BoundFamily``)."""

    family: Family
    name: str
    roles: dict = field(hash=False)
    units: int
    d_head: int = 0

    @property
    def kind(self) -> str:
        return self.family.kind

    def members(self) -> list[tuple[Slice, int]]:
        return [(s, i) for s in self.family.slices for i in self.roles.get(s.role, [])]

    def _coefficient(self, prefix: str, role: str) -> float:
        names = self.family.stats["coords"]
        key = f"{prefix}_{role}"
        return float(self.family.coords(**{n: float(n == key) for n in names})) if key in names else 0.0

    # ---------------------------------------------------------------- statistics
    def _stats(self, names, theta, u=None, pivot=None) -> dict:
        out = {}
        for name in names:
            m = _ENTRY.match(name)
            if m and m.group("role") in self.roles:
                r0, r1 = _pairs(theta[self.roles[m.group("role")][0]])
                norms = r0 * r0 + r1 * r1
                c = int(m.group("c"))
                if c == 0:
                    j = (jnp.argmax(norms, axis=1) if pivot is None else pivot)[:, None]
                else:
                    j = jnp.argsort(-norms, axis=1, stable=True)[:, c][:, None]
                out[name] = jnp.take_along_axis(r1 if m.group("r") == "1" else r0, j, axis=1)[:, 0]
                continue
            prefix, role = name.split("_", 1)
            s = self.family.slice(role)
            total = None
            for i in self.roles[role]:
                t = theta[i]
                if prefix == "sq":
                    v = (t * t).reshape(t.shape[0] // 2, -1).sum(1) if self.kind == "plane" else _reduce(t * t, s.axis)
                elif prefix == "mean":
                    v = _reduce(t, s.axis)
                elif prefix == "n":
                    v = jnp.full((_reduce(t, s.axis).shape[0],), float(_slice_len(t, s.axis)), t.dtype)
                elif prefix == "dot":
                    v = _reduce(t * u[i], s.axis)
                elif prefix == "usum":
                    v = _reduce(u[i], s.axis)
                elif prefix == "cross":
                    a0, a1 = _pairs(t)
                    b0, b1 = _pairs(u[i])
                    v = (a0 * b1 - a1 * b0).sum(1)
                else:  # pragma: no cover
                    raise KeyError(name)
                total = v if total is None else total + v
            if prefix == "mean":
                total = total / sum(_slice_len(theta[i], s.axis) for i in self.roles[role])
            out[name] = total
        return out

    # ---------------------------------------------------------------- frame and action
    def frame(self, theta, pivot=None):
        """``h(θ)``; a plane frame anchored in the columns ``pivot`` (default: the largest), see :meth:`pivot`."""
        if self.kind == "head":
            return self._head_frame(theta)
        return self.family.frame(**self._stats(self.family.stats["frame"], theta, pivot=pivot))

    def pivot(self, theta, held=None):
        """The plane frame's anchor column per plane, ``(planes,)`` int32: the largest plane norm, or ``held``
        (``-1``: none) while its norm² is at least ``1/PIVOT_HOLD`` of the largest (the torch twin's
        ``BoundFamily.pivot``: plane norms are rotation-invariant, so the frame stays equivariant)."""
        r0, r1 = _pairs(theta[self.roles[self.family.slices[0].role][0]])
        norms = r0 * r0 + r1 * r1
        best = jnp.argmax(norms, axis=1).astype(jnp.int32)
        if held is None:
            return best
        valid = (held >= 0) & (held < norms.shape[1])
        kept = jnp.take_along_axis(norms, jnp.where(valid, held, best)[:, None], axis=1)[:, 0]
        top = jnp.take_along_axis(norms, best[:, None], axis=1)[:, 0]
        return jnp.where(valid & (kept > 0) & (PIVOT_HOLD * kept >= top), held, best).astype(jnp.int32)

    def degenerate(self, theta, h):
        """Units whose frame is undefined, decided by invariants (the torch ``BoundFamily.degenerate``)."""
        if self.kind == "translate":
            return jnp.zeros(self.units, bool)
        if self.kind == "head":  # rank < d_head: M = ΘΘᵀ's eigenvalues (rotation-invariant) reach round-off
            th = self._head_rows(theta)
            lam = jnp.linalg.eigvalsh(th @ jnp.swapaxes(th, 1, 2))
            floor = (th.shape[-1] + self.d_head) * jnp.finfo(th.dtype).eps * lam[:, -1]
            return (lam[:, 0] <= floor) | ~jnp.isfinite(h).reshape(self.units, -1).all(1)
        if self.kind == "plane":
            r0, r1 = _pairs(theta[self.roles[self.family.slices[0].role][0]])
            c, sn = h
            return ((r0 * r0 + r1 * r1).sum(1) == 0) | ~jnp.isfinite(c) | ~jnp.isfinite(sn)
        bad = ~jnp.isfinite(h) | (h == 0)
        for v in self.side_sums(theta).values():
            bad = bad | (v == 0)
        return bad

    def side_sums(self, theta) -> dict:
        """Per unit ``Σ θ²`` over the slices of each sign of exponent, ``{±1: (units,)}`` (the torch twin's)."""
        sides: dict = {}
        for s, i in self.members():
            v = _reduce(theta[i] * theta[i], s.axis)
            key = 1 if s.exponent > 0 else -1
            sides[key] = v if key not in sides else sides[key] + v
        return sides

    def identity_where(self, mask, h):
        """The frame with the identity element on the ``mask`` ed units."""
        if self.kind == "scale":
            return jnp.where(mask, 1.0, h)
        if self.kind == "translate":
            return h
        if self.kind == "plane":
            c, sn = h
            return jnp.where(mask, 1.0, c), jnp.where(mask, 0.0, sn)
        return jnp.where(mask[:, None, None], jnp.eye(self.d_head, dtype=h.dtype), h)

    def act(self, h, ts: list, inverse: bool = False, covector: bool = False) -> list:
        ts = list(ts)
        for s, i in self.members():
            t = ts[i]
            if self.kind == "scale":
                e = s.exponent * (-1 if inverse else 1) * (-1 if covector else 1)
                ts[i] = t * _bcast(h if e > 0 else 1 / h, t, s.axis)
            elif self.kind == "translate":
                if not covector:
                    ts[i] = t + _bcast(-h if inverse else h, t, s.axis)
            elif self.kind == "plane":
                c, sn = h
                sn = -sn if inverse else sn
                r0, r1 = _pairs(t)
                ts[i] = _unpairs(c[:, None] * r0 + sn[:, None] * r1, c[:, None] * r1 - sn[:, None] * r0, t)
            else:
                v = t.reshape(self.units, self.d_head, -1)
                m = jnp.swapaxes(h, 1, 2) if inverse else h
                ts[i] = (m @ v).reshape(t.shape)
        return ts

    def _head_frame(self, theta):
        """Pivoted Gram–Schmidt per head (as the torch backend; ``h = Qᵀ``)."""
        a = jnp.concatenate([theta[i].reshape(self.units, self.d_head, -1) for _, i in self.members()], axis=2)
        res, qs = a, []
        for _ in range(self.d_head):
            norms = (res * res).sum(1)
            j = jnp.argmax(norms, axis=1)
            col = jnp.take_along_axis(res, j[:, None, None], axis=2)[:, :, 0]
            q = col / jnp.linalg.norm(col, axis=1, keepdims=True)
            for prev in qs:
                q = q - prev * (prev * q).sum(1, keepdims=True)
            q = q / jnp.linalg.norm(q, axis=1, keepdims=True)
            qs.append(q)
            res = res - q[:, :, None] * (q[:, :, None] * res).sum(1, keepdims=True)
        return jnp.stack(qs, axis=1)

    # ---------------------------------------------------------------- vertical directions
    def _head_rows(self, ts):
        return jnp.concatenate([ts[i].reshape(self.units, self.d_head, -1) for _, i in self.members()], axis=2)

    def gram(self, theta):
        if self.kind == "head":
            th = self._head_rows(theta)
            return th @ jnp.swapaxes(th, 1, 2)
        return self.family.gram(**self._stats(self.family.stats["gram"], theta))

    def coords(self, theta, u):
        if self.kind == "head":
            c = self._head_rows(u) @ jnp.swapaxes(self._head_rows(theta), 1, 2)
            return c - jnp.swapaxes(c, 1, 2)
        return self.family.coords(**self._stats(self.family.stats["coords"], theta, u))

    def noise_floor(self, theta, u, rtol: float):
        eps = float(jnp.finfo(theta[0].dtype).eps)
        if self.kind == "head":
            th, uu = jnp.abs(self._head_rows(theta)), jnp.abs(self._head_rows(u))
            c = uu @ jnp.swapaxes(th, 1, 2)
            return max((th.shape[-1] + 8) * eps, rtol) * (c + jnp.swapaxes(c, 1, 2))
        total, length = None, 0
        for s, i in self.members():
            t, v = jnp.abs(theta[i]), jnp.abs(u[i])
            if self.kind == "scale":
                w = abs(self._coefficient("dot", s.role)) * _reduce(t * v, s.axis)
            elif self.kind == "translate":
                w = abs(self._coefficient("usum", s.role)) * _reduce(v, s.axis)
            else:
                a0, a1 = _pairs(t)
                b0, b1 = _pairs(v)
                w = abs(self._coefficient("cross", s.role)) * (a0 * b1 + a1 * b0).sum(1)
            length += t.size // max(self.units, 1)
            total = w if total is None else total + w
        return max((length + 8) * eps, rtol) * total

    def lift(self, coef, theta, out: list, alpha: float = 1.0) -> list:
        """``out + alpha · Σ_k coef_k X_k(θ)`` (new list)."""
        out = list(out)
        if self.kind == "head":
            for _, i in self.members():
                t = theta[i].reshape(self.units, self.d_head, -1)
                out[i] = out[i] + alpha * (coef @ t).reshape(theta[i].shape)
            return out
        for s, i in self.members():
            t = theta[i]
            if self.kind == "scale":
                out[i] = out[i] + alpha * _bcast(self._coefficient("dot", s.role) * coef, t, s.axis) * t
            elif self.kind == "translate":
                out[i] = out[i] + alpha * _bcast(self._coefficient("usum", s.role) * coef, t, s.axis)
            else:
                w = (self._coefficient("cross", s.role) * coef)[:, None]
                a0, a1 = _pairs(t)
                o0, o1 = _pairs(out[i])
                out[i] = _unpairs(o0 - alpha * w * a1, o1 + alpha * w * a0, t)
        return out
