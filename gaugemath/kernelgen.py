"""Kernel generation: the derived per-family formulas as Triton kernels for the torch backend.

``gaugemath codegen`` derives and proves, per orbit family, the canonical frame ``h_k``, the Gram
diagonal ``Γ_kk`` and the vertical coordinate ``⟨X_k, u⟩`` as formulas in per-unit statistics
(:mod:`gaugemath.codegen`). This module prints the *same* SymPy expressions as ``@triton.jit``
kernels into ``backends/torch/_kernels.py`` (checked for staleness by ``gaugemath codegen
--check``), together with the generic plumbing they need, written once as templates:

=====================  ==========================================================================
kernel                 what it does (one launch)
=====================  ==========================================================================
``reduce_slices``      reduction pass: one read of ``θ̃`` (and ``u``) gives every per-unit statistic
                       ``Σθ², Σθ, Σθu, Σ|θu|, Σu, Σ|u|`` (plane pairs: ``Σθ², Σθ₀u₁−θ₁u₀,
                       Σ|θ₀u₁|+|θ₁u₀|``) of one tensor's slices, accumulated over a role's tensors
``scale_slices``       group action / lift on one tensor: ``θ ← h^e θ`` and ``g ← h^{−e} g`` in one
                       pass (scale), ``θ ← θ ± v`` (translate), ``o ← o + α w_k X_k(θ)``
``rotate_planes``      the same for RoPE planes: rotate ``θ`` and ``g`` pairs, lift ``(−θ₁, θ₀)``
``adam_direction``     fused Adam: moments of ``g̃_H`` updated in place and ``u = m̂/(√v̂+ε)`` written
``<family>__frame``    **generated**: ``h_k`` from the frame statistics
``<family>__gram``     **generated**: ``Γ_kk`` from the squared-norm statistics
``<family>__coords``   **generated**: ``⟨X_k, u⟩``; with ``FLOOR`` the round-off floor
                       ``tol · Σ |∂c/∂s| s_abs`` (read off the linear coordinate) zeroes coordinates
                       that cannot be told from zero (``DDCAdam``'s ``vertical_rtol`` rule)
=====================  ==========================================================================

The formulas are printed by :class:`TritonPrinter`, a subclass of our
:class:`~gaugemath.printing.ArrayPrinter`: it prints only ``+ − × ÷``, ``tl.sqrt``, ``tl.abs``,
integer powers as products and rational powers with power-of-two denominators as nested square
roots, and refuses anything else. Matrix-valued families (``kind="head"``) get no kernels: their
frame is a pivoted Gram–Schmidt and stays in torch.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import sympy as sp
from sympy.printing.str import StrPrinter

from .printing import ArrayPrinter

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "backends" / "torch" / "_kernels.py"

#: rows of the statistics buffer written by ``reduce_slices`` (shape ``(len(STATS), units)``)
STATS = ("sq", "sum", "dot", "adot", "usum", "ausum", "cross", "across")
#: the absolute-value twin of each coordinate statistic (for the round-off floor)
ABS = {"dot": "adot", "usum": "ausum", "cross": "across"}


class TritonPrinter(ArrayPrinter):
    """Print a scalar SymPy expression as ``triton.language`` code (``tl``).

    >>> import sympy as sp
    >>> a, b = sp.symbols("a b", positive=True)
    >>> TritonPrinter().doprint(a**sp.Rational(1, 4) / b**2)
    'tl.sqrt(tl.sqrt(a))/(b*b)'
    """

    def __init__(self):
        StrPrinter.__init__(self)
        self.module = "tl"

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exp = expr.args
        if not exp.is_Rational:
            raise ValueError(f"cannot print the power {expr} (only rational exponents are generated)")
        if exp < 0:
            inner = self._print_Pow(sp.Pow(base, -exp, evaluate=False))
            return f"1/{inner}" if inner.startswith(("tl.", "(")) else f"1/({inner})"
        p, q = int(exp.p), int(exp.q)
        if q & (q - 1):
            raise ValueError(f"cannot print the power {expr}: only denominators 2^j are generated as square roots")
        b = self._print(base)
        while q > 1:
            b, q = f"tl.sqrt({b})", q // 2
        if p == 1:
            return b
        if not b.startswith("tl.") and not b.isidentifier():
            b = f"({b})"
        return "(" + "*".join([b] * p) + ")"


def _print(expr: sp.Expr) -> str:
    return TritonPrinter().doprint(expr)


def floor_expr(coords: sp.Expr) -> sp.Expr:
    """``Σ_s |∂c/∂s| · s_abs`` for a coordinate ``c`` linear in its statistics ``s`` (``dot_R → adot_R`` …).

    This bounds ``|c|`` by the same sums of absolute values, the quantity ``DDCAdam``'s noise floor
    scales (``BoundFamily.noise_floor``). Refuses a coordinate that is not linear.
    """
    out = sp.Integer(0)
    for s in sorted(coords.free_symbols, key=lambda s: s.name):
        d = sp.diff(coords, s)
        if d.free_symbols:
            raise ValueError(f"vertical coordinate {coords} is not linear in {s}")
        prefix, role = s.name.split("_", 1)
        out += sp.Abs(d) * sp.Symbol(f"{ABS[prefix]}_{role}", positive=True)
    return out


# ------------------------------------------------------------------------- templates
TEMPLATES = '''
# --------------------------------------------------------------------------- templates (plumbing)
@triton.jit
def reduce_slices(t_ptr, u_ptr, out_ptr, M, N, s_m, s_n, s_pair, out_stride,
                  HAS_U: tl.constexpr, PLANE: tl.constexpr, ACCUM: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per-unit sums over the slices of one tensor viewed as ``(M units, N)`` with strides
    ``(s_m, s_n)`` (plane: rows ``2k`` and ``2k+1 = 2k + s_pair``). Writes (``ACCUM``: adds) rows
    ``sq, sum, dot, adot, usum, ausum, cross, across`` of ``out`` (``(8, M)``, row stride ``out_stride``)."""
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = rm < M
    zero = tl.zeros([BLOCK_M], dtype=t_ptr.dtype.element_ty)
    sq, sm, dt, adt, us, aus, cr, acr = zero, zero, zero, zero, zero, zero, zero, zero
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        mask = mm[:, None] & (rn < N)[None, :]
        off = rm[:, None] * s_m + rn[None, :] * s_n
        a = tl.load(t_ptr + off, mask=mask, other=0.0)
        if PLANE:
            a1 = tl.load(t_ptr + off + s_pair, mask=mask, other=0.0)
            sq += tl.sum(a * a + a1 * a1, axis=1)
            if HAS_U:
                b = tl.load(u_ptr + off, mask=mask, other=0.0)
                b1 = tl.load(u_ptr + off + s_pair, mask=mask, other=0.0)
                p, q = a * b1, a1 * b
                cr += tl.sum(p - q, axis=1)
                acr += tl.sum(tl.abs(p) + tl.abs(q), axis=1)
        else:
            sq += tl.sum(a * a, axis=1)
            sm += tl.sum(a, axis=1)
            if HAS_U:
                b = tl.load(u_ptr + off, mask=mask, other=0.0)
                p = a * b
                dt += tl.sum(p, axis=1)
                adt += tl.sum(tl.abs(p), axis=1)
                us += tl.sum(b, axis=1)
                aus += tl.sum(tl.abs(b), axis=1)
    rows = (sq, sm, dt, adt, us, aus, cr, acr)
    for r in tl.static_range(8):
        ptr = out_ptr + r * out_stride + rm
        val = rows[r]
        if ACCUM:
            val = tl.load(ptr, mask=mm, other=0.0) + val
        tl.store(ptr, val, mask=mm)


@triton.jit
def scale_slices(x_ptr, y_ptr, w_ptr, M, N, s_m, s_n, coef, alpha,
                 MODE: tl.constexpr, EXP_X: tl.constexpr, EXP_Y: tl.constexpr, HAS_Y: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One tensor viewed as ``(M units, N)``; ``w`` per unit. ``MODE`` 0: ``x ← x·w^EXP_X`` and
    ``y ← y·w^EXP_Y`` (scale action and covector rule); 1: ``x ← x + EXP_X·w`` (translation);
    2: ``y ← y + α((coef·w)·x)`` (lift, scale); 3: ``y ← y + α(coef·w)`` (lift, translation)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mask = mm[:, None] & (rn < N)[None, :]
    off = rm[:, None] * s_m + rn[None, :] * s_n
    w = tl.load(w_ptr + rm, mask=mm, other=1.0)[:, None]
    if MODE == 0:
        x = tl.load(x_ptr + off, mask=mask, other=0.0)
        if EXP_X > 0:
            tl.store(x_ptr + off, x * w, mask=mask)
        else:
            tl.store(x_ptr + off, x * (1 / w), mask=mask)
        if HAS_Y:
            y = tl.load(y_ptr + off, mask=mask, other=0.0)
            if EXP_Y > 0:
                tl.store(y_ptr + off, y * w, mask=mask)
            else:
                tl.store(y_ptr + off, y * (1 / w), mask=mask)
    elif MODE == 1:
        x = tl.load(x_ptr + off, mask=mask, other=0.0)
        if EXP_X > 0:
            tl.store(x_ptr + off, x + w, mask=mask)
        else:
            tl.store(x_ptr + off, x + (-w), mask=mask)
    elif MODE == 2:
        x = tl.load(x_ptr + off, mask=mask, other=0.0)
        y = tl.load(y_ptr + off, mask=mask, other=0.0)
        tl.store(y_ptr + off, y + alpha * ((coef * w) * x), mask=mask)
    else:
        y = tl.load(y_ptr + off, mask=mask, other=0.0)
        tl.store(y_ptr + off, y + alpha * (coef * w), mask=mask)


@triton.jit
def rotate_planes(x_ptr, y_ptr, c_ptr, s_ptr, M, N, coef, alpha,
                  MODE: tl.constexpr, INVERSE: tl.constexpr, HAS_Y: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Plane pairs of a contiguous ``(2M, N)`` tensor. ``MODE`` 0: ``(r₀, r₁) ← (c r₀ + s r₁, c r₁ − s r₀)``
    on ``x`` (and ``y``), ``s → −s`` for ``INVERSE``; 1: lift ``y ← y + α (−w θ₁, w θ₀)``, ``w = coef·c``."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mask = mm[:, None] & (rn < N)[None, :]
    off0 = rm[:, None] * (2 * N) + rn[None, :]
    off1 = off0 + N
    c = tl.load(c_ptr + rm, mask=mm, other=0.0)[:, None]
    if MODE == 0:
        s = tl.load(s_ptr + rm, mask=mm, other=0.0)[:, None]
        if INVERSE:
            s = -s
        a0 = tl.load(x_ptr + off0, mask=mask, other=0.0)
        a1 = tl.load(x_ptr + off1, mask=mask, other=0.0)
        tl.store(x_ptr + off0, c * a0 + s * a1, mask=mask)
        tl.store(x_ptr + off1, c * a1 - s * a0, mask=mask)
        if HAS_Y:
            b0 = tl.load(y_ptr + off0, mask=mask, other=0.0)
            b1 = tl.load(y_ptr + off1, mask=mask, other=0.0)
            tl.store(y_ptr + off0, c * b0 + s * b1, mask=mask)
            tl.store(y_ptr + off1, c * b1 - s * b0, mask=mask)
    else:
        w = coef * c
        a0 = tl.load(x_ptr + off0, mask=mask, other=0.0)
        a1 = tl.load(x_ptr + off1, mask=mask, other=0.0)
        o0 = tl.load(y_ptr + off0, mask=mask, other=0.0)
        o1 = tl.load(y_ptr + off1, mask=mask, other=0.0)
        tl.store(y_ptr + off0, o0 + alpha * (-w * a1), mask=mask)
        tl.store(y_ptr + off1, o1 + alpha * (w * a0), mask=mask)


@triton.jit
def adam_direction(g_ptr, m_ptr, v_ptr, u_ptr, sc_ptr, n, BLOCK: tl.constexpr):
    """Adam in place, as ``torch.optim.AdamW``'s foreach path: ``m ← m + (1−β₁)(g − m)``,
    ``v ← β₂v + (1−β₂)g²``, ``u = (m / (√v/√bc₂ + ε)) / bc₁``. ``sc = [1−β₁, β₂, 1−β₂, √bc₂, ε, bc₁]``
    in the state dtype; ``g`` and ``u`` in the work dtype."""
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = o < n
    sdt = m_ptr.dtype.element_ty
    w1 = tl.load(sc_ptr + 0)
    b2 = tl.load(sc_ptr + 1)
    w2 = tl.load(sc_ptr + 2)
    sbc2 = tl.load(sc_ptr + 3)
    eps = tl.load(sc_ptr + 4)
    bc1 = tl.load(sc_ptr + 5)
    g = tl.load(g_ptr + o, mask=mask, other=0.0).to(sdt)
    m = tl.load(m_ptr + o, mask=mask, other=0.0)
    v = tl.load(v_ptr + o, mask=mask, other=0.0)
    m = m + w1 * (g - m)
    v = v * b2 + w2 * g * g
    u = (m / (tl.sqrt(v) / sbc2 + eps)) / bc1
    tl.store(m_ptr + o, m, mask=mask)
    tl.store(v_ptr + o, v, mask=mask)
    tl.store(u_ptr + o, u.to(u_ptr.dtype.element_ty), mask=mask)
'''


def _unit_kernel(name: str, inputs: Sequence[str], outputs: Sequence[tuple[str, str]], doc: str,
                 floor: str | None = None) -> list[str]:
    """An element-wise kernel over units: load ``inputs``, store each ``(out, printed expr)``."""
    args = [f"{s}_ptr" for s in inputs]
    if floor is not None:
        args.append("tol")
    args += [f"{o}_ptr" for o, _ in outputs] + ["n", "BLOCK: tl.constexpr"]
    if floor is not None:
        args.insert(len(args) - 1, "FLOOR: tl.constexpr")
    lines = ["@triton.jit", f"def {name}({', '.join(args)}):", f'    """{doc}"""',
             "    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)", "    mask = k < n"]
    lines += [f"    {s} = tl.load({s}_ptr + k, mask=mask, other=1.0)" for s in inputs
              if floor is None or not s.startswith(tuple(ABS.values()))]
    for out, code in outputs:
        lines.append(f"    {out} = {code}")
    if floor is not None:
        lines.append("    if FLOOR:")
        lines += [f"        {s} = tl.load({s}_ptr + k, mask=mask, other=1.0)" for s in inputs
                  if s.startswith(tuple(ABS.values()))]
        lines.append(f"        {outputs[0][0]} = tl.where(tl.abs({outputs[0][0]}) <= tol * ({floor}), 0.0, "
                     f"{outputs[0][0]})")
    lines += [f"    tl.store({o}_ptr + k, {o}, mask=mask)" for o, _ in outputs]
    return lines + ["", ""]


def _names(exprs: Sequence[sp.Expr]) -> list[str]:
    return sorted({s.name for e in exprs for s in e.free_symbols})


def render(specs) -> str:
    """The generated Triton module (deterministic text) for the families ``specs`` (``FamilySpec``)."""
    lines = [
        '"""Generated by ``gaugemath codegen`` from the symbolic core — do not edit (triton).',
        "",
        "Fused kernels of the torch backend: the generated per-family formulas (frame, Gram diagonal,",
        "vertical coordinate with its round-off floor), printed by ``gaugemath.kernelgen.TritonPrinter``",
        "from the expressions ``gaugemath.codegen`` proved, and the template kernels they run with",
        "(reduction pass, action/lift pass, fused Adam). Used by ``gaugemath.backends.torch.kernels``.",
        '"""',
        "",
        "# ruff: noqa: E501",
        "import triton",
        "import triton.language as tl",
        "",
        TEMPLATES,
        "# --------------------------------------------------------------------------- generated per family",
    ]
    table = []
    for spec in specs:
        if spec.kind == "head" or spec.coords is None:
            lines += [f"# {spec.key}: matrix-valued frame (kind={spec.kind!r}): no element-wise kernels", ""]
            continue
        ident = spec.key.replace(".", "__")
        lines += [f"# {spec.key}: {spec.source}"] + [f"#   proved: {c}" for c in spec.checks] + [""]
        frame_in = _names(spec.frame)
        outs = [(f"h{j}", _print(e)) for j, e in enumerate(spec.frame)]
        lines += _unit_kernel(f"{ident}__frame", frame_in, outs, f"h_k = {', '.join(str(e) for e in spec.frame)}")
        gram_in = _names([spec.gram])
        lines += _unit_kernel(f"{ident}__gram", gram_in, [("gram", _print(spec.gram))], f"Γ_kk = {spec.gram}")
        fl = floor_expr(spec.coords)
        coords_in = _names([spec.coords])
        abs_in = _names([fl])
        lines += _unit_kernel(f"{ident}__coords", coords_in + abs_in, [("c", _print(spec.coords))],
                              f"⟨X_k, u⟩ = {spec.coords}; FLOOR: zero where |c| <= tol·({fl})", floor=_print(fl))
        table.append(f"    {spec.key!r}: dict(frame=({ident}__frame, {frame_in!r}, {len(spec.frame)}), "
                     f"gram=({ident}__gram, {gram_in!r}), coords=({ident}__coords, {coords_in!r}, {abs_in!r})),")
    lines += ["#: family key -> (kernel, statistic names[, outputs / floor statistics])", "FAMILY_KERNELS = {"]
    lines += table + ["}", ""]
    text = "\n".join(lines)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return text + f"# content digest: {digest}\n"


def write(specs, check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) ``backends/torch/_kernels.py``; returns the stale paths."""
    text = render(specs)
    current = KERNELS.read_text() if KERNELS.exists() else ""
    if current == text:
        return []
    if check:
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "committed", "generated",
                                    lineterm="", n=1)
        print("\n".join(list(diff)[:40]))
    else:
        KERNELS.write_text(text)
    return [str(KERNELS.relative_to(ROOT))]
