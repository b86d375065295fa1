"""Kernel path of the torch backend: the generated Triton kernels behind the :class:`BoundFamily` API.

``DDCAdam(kernels=...)`` picks one of two paths that compute the same step:

* ``"reference"``: the pure-torch operations of :mod:`.orbits` (any device; the CPU default);
* ``"triton"``: :class:`KernelFamily` runs the kernels ``gaugemath codegen`` writes into
  ``_kernels.py`` (:mod:`gaugemath.kernelgen`): one reduction launch per tensor and statistic set
  (every per-unit sum from one read), the generated per-family frame / Gram / coordinate kernels,
  one launch per tensor for the action on ``θ̃`` *and* ``g̃`` together, one per lift, and a fused
  Adam launch per tensor (moments updated in place, direction written);
* ``"auto"`` (default): ``"triton"`` when the bound tensors are on CUDA and Triton imports,
  else ``"reference"``.

On CPU tensors Triton kernels run only under its interpreter (``TRITON_INTERPRET=1`` set before
``triton`` is first imported); the tests use it to check both paths agree to 1e-6 (fp32). Forcing
``"triton"`` where it cannot run raises ``RuntimeError`` with the reason. Matrix-valued families
(``head_rotation.norope``) keep the reference operations on either path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from .orbits import BoundFamily

KERNELS = ("auto", "triton", "reference")
_ROW = {name: r for r, name in enumerate(("sq", "sum", "dot", "adot", "usum", "ausum", "cross", "across"))}
UNIT_BLOCK = 128
TILE = (32, 64)


def triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton path cannot run on ``device`` (``None``: it can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install 'gaugemath[triton]')"
    if device.type == "cuda":
        return None
    if device.type != "cpu" or os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on"):
        return (f"Triton kernels need CUDA tensors (bound tensors are on {device}); on CPU they run only under "
                "the interpreter, TRITON_INTERPRET=1 set before triton is imported")
    if type(_lib().reduce_slices).__name__ != "InterpretedFunction":
        return "the kernels were compiled before TRITON_INTERPRET=1 was set; set it before importing triton"
    return None


def select(kernels: str, device: torch.device) -> str:
    """``"triton"`` or ``"reference"`` for the option ``kernels`` and the bound tensors' ``device``."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}: choose from {KERNELS}")
    if kernels == "reference":
        return "reference"
    reason = triton_unavailable(device)
    if kernels == "triton" and reason is not None:
        raise RuntimeError(f"kernels='triton': {reason}")
    if kernels == "auto" and (reason is not None or device.type != "cuda"):
        return "reference"
    return "triton"


def _lib():
    from . import _kernels

    return _kernels


def _grid1(n: int) -> tuple[int]:
    return (max(1, -(-n // UNIT_BLOCK)),)


def _view(t: Tensor, axis: str) -> tuple[int, int, int, int]:
    """``t`` (contiguous) as ``(M units, N)`` with strides: rows, cols (transposed) or all."""
    if axis == "rows":
        return t.shape[0], t.numel() // max(t.shape[0], 1), t.numel() // max(t.shape[0], 1), 1
    if axis == "cols":
        return t.shape[1], t.shape[0], 1, t.shape[1]
    return 1, t.numel(), 0, 1


def _dense(t: Tensor) -> tuple[Tensor, Tensor | None]:
    """A contiguous tensor to run an in-place kernel on, and the original when that is a copy."""
    return (t, None) if t.is_contiguous() else (t.contiguous(), t)


def _back(*pairs) -> None:
    """Copy kernel results back into non-contiguous originals (``_dense`` pairs, flattened)."""
    for work, orig in zip(pairs[::2], pairs[1::2]):
        if orig is not None:
            orig.copy_(work)


class KernelFamily(BoundFamily):
    """A :class:`BoundFamily` whose element-wise work runs as the generated Triton kernels."""

    @classmethod
    def of(cls, fam: BoundFamily) -> BoundFamily:
        """The kernel twin of ``fam`` (``fam`` itself for matrix-valued families)."""
        if fam.kind == "head":
            return fam
        return cls(fam.family, fam.name, fam.roles, fam.units, fam.d_head)

    @property
    def _k(self) -> dict:
        return _lib().FAMILY_KERNELS[self.family.key]

    # ---------------------------------------------------------------- reduction pass
    def _sums(self, role: str, theta: list[Tensor], u: list[Tensor] | None) -> Tensor:
        """``(8, units)`` per-unit sums over the slices of every tensor of ``role`` (one launch each)."""
        s = self.family.slice(role)
        idx = self.roles.get(role, [])
        ref = theta[idx[0]] if idx else theta[0]
        out = ref.new_zeros(8, self.units)
        lib = _lib()
        for j, i in enumerate(idx):
            t = theta[i].contiguous()
            if self.kind == "plane":
                m, n, s_m, s_n, pair = t.shape[0] // 2, t.numel() // t.shape[0], 2 * (t.numel() // t.shape[0]), 1, \
                    t.numel() // t.shape[0]
            else:
                (m, n, s_m, s_n), pair = _view(t, s.axis), 0
            bm, bn = TILE
            lib.reduce_slices[(max(1, -(-m // bm)),)](
                t, t if u is None else u[i].contiguous(), out, m, n, s_m, s_n, pair, self.units,
                HAS_U=u is not None, PLANE=self.kind == "plane", ACCUM=j > 0, BLOCK_M=bm, BLOCK_N=bn)
        return out

    def _role_sum(self, prefix: str, role: str, theta: list[Tensor], u: list[Tensor] | None, cache: dict) -> Tensor:
        """Row ``prefix`` of the role's :meth:`_sums` (one reduction launch per tensor serves every prefix,
        the absolute-value twins ``adot``/``ausum``/``across`` of the round-off floor included)."""
        if role not in cache:
            cache[role] = self._sums(role, theta, u)
        return cache[role][_ROW[prefix]]

    def _run(self, which: str, stats: dict[str, Tensor], names: Sequence[str], outputs: int, *extra,
             **meta) -> list[Tensor]:
        ref = next(iter(stats.values()))
        outs = [torch.empty(self.units, dtype=ref.dtype, device=ref.device) for _ in range(outputs)]
        fn = self._k[which][0]
        fn[_grid1(self.units)](*[stats[n] for n in names], *extra, *outs, self.units, BLOCK=UNIT_BLOCK, **meta)
        return outs

    # ---------------------------------------------------------------- generated formulas
    def frame(self, theta: list[Tensor], pivot: Tensor | None = None):
        fn, names, outputs = self._k["frame"]
        outs = self._run("frame", self._stats(names, theta, pivot=pivot), names, outputs)
        return outs[0] if outputs == 1 else tuple(outs)

    def gram(self, theta: list[Tensor]) -> Tensor:
        return self._eval("gram", self._stats(self._k["gram"][1], theta))

    def coords(self, theta: list[Tensor], u: list[Tensor]) -> Tensor:
        return self._eval("coords", self._stats(self._k["coords"][1], theta, u))

    def _eval(self, which: str, stats: dict[str, Tensor]) -> Tensor:
        if which == "gram":
            return self._run("gram", stats, self._k["gram"][1], 1)[0]
        _, names, abs_names = self._k["coords"]
        stats = dict(stats, **{n: stats[names[0]] for n in abs_names})  # not read without FLOOR
        return self._run("coords", stats, [*names, *abs_names], 1, 0.0, FLOOR=False)[0]

    def vertical_rhs(self, theta: list[Tensor], u: list[Tensor], rtol: float) -> Tensor:
        _, names, abs_names = self._k["coords"]
        stats = self._stats([*names, *abs_names], theta, u)
        return self._run("coords", stats, [*names, *abs_names], 1, self.floor_scale(theta, rtol), FLOOR=True)[0]

    # ---------------------------------------------------------------- action and lift
    def act(self, h, ts: list[Tensor], inverse: bool = False, covector: bool = False) -> None:
        if self.kind == "translate" and covector:
            return
        self._apply(h, ts, None, inverse, covector)

    def act_pair(self, h, theta: list[Tensor], grad: list[Tensor]) -> None:
        """``θ ← h·θ`` and ``g ← D(h)^{-T} g`` in one launch per tensor."""
        if self.kind == "translate":  # D(h) = I
            self._apply(h, theta, None, False, False)
        else:
            self._apply(h, theta, grad, False, False)

    def _apply(self, h, xs: list[Tensor], ys: list[Tensor] | None, inverse: bool, covector: bool) -> None:
        lib, (bm, bn) = _lib(), TILE
        for s, i in self.members():
            x, xo = _dense(xs[i])
            y, yo = (x, None) if ys is None else _dense(ys[i])
            if self.kind == "plane":
                c, sn = h
                m, n = x.shape[0] // 2, x.numel() // x.shape[0]
                lib.rotate_planes[(-(-m // bm), -(-n // bn))](x, y, c, sn, m, n, 0.0, 0.0, MODE=0, INVERSE=inverse,
                                                             HAS_Y=ys is not None, BLOCK_M=bm, BLOCK_N=bn)
                _back(x, xo, y, yo)
                continue
            m, n, s_m, s_n = _view(x, s.axis)
            e = s.exponent * (-1 if inverse else 1) * (-1 if covector else 1)
            mode = 0 if self.kind == "scale" else 1
            if mode == 1:
                e = -1 if inverse else 1
            lib.scale_slices[(-(-m // bm), -(-n // bn))](x, y, h, m, n, s_m, s_n, 0.0, 0.0, MODE=mode, EXP_X=e,
                                                         EXP_Y=-e, HAS_Y=ys is not None, BLOCK_M=bm, BLOCK_N=bn)
            _back(x, xo, y, yo)

    def lift(self, coef: Tensor, theta: list[Tensor], out: list[Tensor], alpha: float = 1.0) -> None:
        lib, (bm, bn) = _lib(), TILE
        coef = coef.contiguous()
        for s, i in self.members():
            t, (o, oo) = theta[i].contiguous(), _dense(out[i])
            if self.kind == "plane":
                m, n = t.shape[0] // 2, t.numel() // t.shape[0]
                lib.rotate_planes[(-(-m // bm), -(-n // bn))](
                    t, o, coef, coef, m, n, self._coefficient("cross", s.role), float(alpha), MODE=1, INVERSE=False,
                    HAS_Y=True, BLOCK_M=bm, BLOCK_N=bn)
                _back(o, oo)
                continue
            m, n, s_m, s_n = _view(t, s.axis)
            prefix, mode = ("dot", 2) if self.kind == "scale" else ("usum", 3)
            lib.scale_slices[(-(-m // bm), -(-n // bn))](
                t, o, coef, m, n, s_m, s_n, self._coefficient(prefix, s.role), float(alpha), MODE=mode, EXP_X=1,
                EXP_Y=1, HAS_Y=True, BLOCK_M=bm, BLOCK_N=bn)
            _back(o, oo)


def adam_directions(grads: list[Tensor], m: list[Tensor], v: list[Tensor], betas: tuple[float, float],
                    eps: float, bc1: float | Tensor, bc2: float | Tensor, work: torch.dtype) -> list[Tensor]:
    """Fused Adam per tensor (moments in place); returns ``u = m̂/(√v̂ + ε)`` in ``work``.

    Scalars travel as one small tensor in the state dtype so fp64 states see exact fp64 constants.
    """
    lib = _lib()
    b1, b2 = betas
    scalars = [1 - b1, b2, 1 - b2, bc2**0.5, eps, bc1]
    if any(isinstance(x, Tensor) for x in scalars):  # under torch.compile the bias corrections are tensors
        sc = torch.stack([torch.as_tensor(x, dtype=m[0].dtype) for x in scalars]).to(m[0].device)
    else:
        sc = torch.tensor(scalars, dtype=m[0].dtype).to(m[0].device, non_blocking=True)
    out = []
    for g, mm, vv in zip(grads, m, v):
        u = torch.empty(mm.shape, dtype=work, device=mm.device)
        n = mm.numel()
        lib.adam_direction[(max(1, -(-n // 1024)),)](g, mm, vv, u, sc, n, BLOCK=1024)
        out.append(u)
    return out
