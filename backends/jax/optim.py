"""``ddc_adam``: DDCAdam as an ``optax.GradientTransformation`` (semantics of the torch backend).

The step on gauge-bound leaves is the one documented in ``gaugemath.backends.torch.optim``
(canonical frame, round-off-aware split, Adam in the canonical frame, horizontal update,
vertical policy, map back); leaves bound to no gauge take exactly ``optax.adamw``'s update, so
``ddc_adam`` with no gauges *is* ``optax.adamw``. The returned updates are ``θ' − θ``: apply them
with ``optax.apply_updates``. Works under ``jax.jit`` and ``jax.vmap``, composes with
``optax.chain`` and takes an optax schedule as ``learning_rate``; the state is a pytree of arrays.

Non-finite gradients: under ``jit`` nothing can be raised, so ``nonfinite="skip"`` (default) makes a
step with any non-finite gradient a no-op (zero updates, state unchanged, decided on the device);
``nonfinite="raise"`` raises a ``GaugeError`` naming the leaf path and gauge when called eagerly
(outside ``jit``) and refuses to trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gaugemath.errors import GaugeError

from .._balance import balanced_order
from .balance import JointBalance, canonicalise
from .binding import JaxBinding, _key
from .layout import entries, from_work, sync, to_work, to_work_one
from .projection import Projector

VERTICAL = ("freeze", "sgd", "adam")


class DDCAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    vertical: tuple
    momentum: Any = ()  # ddc_muon: one momentum buffer per Muon leaf (tuple, in leaf order)
    pivots: tuple = ()  # per plane family (in the optimizer's family order) its anchor columns, int32 (-1: none)
    balance: tuple = ()  # per coupled scale family (JointBalance.coupled order) last step's log-scales (NaN: none)


def newton_schulz(g, coefficients=(3.4445, -4.775, 2.0315), steps: int = 5, eps: float = 1e-7,
                  dtype=jnp.bfloat16):
    """Quintic Newton–Schulz ``≈ msign(g)``, as ``torch.optim.Muon`` (and the torch backend) computes it."""
    a, b, c = coefficients
    x = g.astype(dtype or g.dtype)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    x = x / jnp.maximum(jnp.linalg.norm(x), eps).astype(x.dtype)
    for _ in range(steps):
        gram = x @ x.T
        update = b * gram + c * (gram @ gram)
        x = a * x + update @ x
    return x.T if tall else x


def _muon_direction(buf, g, t, cfg):
    """Nesterov momentum fed to Newton–Schulz: torch's ``g.lerp(buf, β)``, or with ``style="optax"``
    ``optax.contrib.scale_by_muon``'s bias-corrected ``β m/(1−β^{t+1}) + (1−β) g/(1−β^t)``."""
    beta = cfg["momentum"]
    if cfg["style"] == "optax":
        if not cfg["nesterov"]:
            return buf / (1 - beta**t).astype(buf.dtype)
        corrected = buf / (1 - beta ** (t + 1)).astype(buf.dtype)
        return beta * corrected + (1 - beta) * (g / (1 - beta**t).astype(buf.dtype))
    return g + beta * (buf - g) if cfg["nesterov"] else buf


def _adjust(lr_fn, shape) -> float:
    a, b = shape[:2]
    if lr_fn is None or lr_fn == "original":
        return math.sqrt(max(1, a / b))
    if lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    return 1.0


def ddc_muon(learning_rate: float | Callable = 0.02, weight_decay: float = 0.1, gauges: JaxBinding | None = None, *,
             muon_leaves=None, momentum: float = 0.95, nesterov: bool = True,
             ns_coefficients=(3.4445, -4.775, 2.0315), ns_steps: int = 5, eps: float = 1e-7,
             adjust_lr_fn: str | None = None, adam_lr: float | Callable = 3e-4, adam_b1: float = 0.9,
             adam_b2: float = 0.999, adam_eps: float = 1e-8, adam_weight_decay: float = 0.1,
             style: str = "torch", ns_dtype=None, canonical_ns_dtype=None,
             **ddc) -> optax.GradientTransformation:
    """DDCMuon as an optax transformation: the JAX twin of ``gaugemath.backends.torch.DDCMuon``.

    ``muon_leaves``: the leaf paths (2-D) that take Muon; the others take AdamW (``adam_*``). With no
    gauges this is ``torch.optim.Muon`` + ``torch.optim.AdamW`` (tested through the torch backend).
    Bound leaves: Muon momentum kept in the canonical frame, Newton–Schulz in ``canonical_ns_dtype``
    (default float64 when ``jax_enable_x64`` is on, else float32).

    ``style="torch"`` (default): ``torch.optim.Muon`` + ``AdamW`` (bf16 Newton–Schulz on free leaves).
    ``style="optax"``: ``optax.contrib.muon`` — bias-corrected Nesterov momentum, NAdam for the rest,
    Newton–Schulz in the leaf dtype; equal to it with ``eps=1e-8`` and torch-layout dimension numbers
    ``MuonDimensionNumbers(reduction_axis=1, output_axis=0)`` on optax's side (tested).
    """
    if style not in ("torch", "optax"):
        raise ValueError(f"style={style!r}: choose 'torch' or 'optax'")
    if ns_dtype is None:
        ns_dtype = jnp.bfloat16 if style == "torch" else None
    if muon_leaves is None:
        raise ValueError("ddc_muon needs muon_leaves: the leaf paths of the matrices that take Muon")
    ns = canonical_ns_dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    config = dict(paths=frozenset(muon_leaves), momentum=momentum, nesterov=nesterov,
                  ns_coefficients=tuple(ns_coefficients), ns_steps=ns_steps, eps=eps, adjust_lr_fn=adjust_lr_fn,
                  adam_lr=adam_lr, adam_weight_decay=adam_weight_decay, adam_nesterov=style == "optax", style=style,
                  ns_dtype=ns_dtype, canonical_ns_dtype=ns)
    return ddc_adam(learning_rate, adam_b1, adam_b2, adam_eps, weight_decay, gauges, _muon=config, **ddc)


def _state_dtype(dtype):
    return jnp.float32 if dtype == jnp.bfloat16 else dtype


def ddc_adam(learning_rate: float | Callable, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
             weight_decay: float = 1e-2, gauges: JaxBinding | None = None, *, vertical: str = "freeze",
             vertical_eps: float | None = None, vertical_rtol: float | None = None, canonical_dtype=None,
             nonfinite: str = "skip", _muon: dict | None = None) -> optax.GradientTransformation:
    """DDCAdam for a parameter pytree bound by :func:`gaugemath.backends.jax.bind` (``gauges``)."""
    if vertical not in VERTICAL:
        raise ValueError(f"vertical={vertical!r}: choose from {VERTICAL}")
    if nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite={nonfinite!r}: choose from ('skip', 'raise')")
    if gauges is not None and not isinstance(gauges, JaxBinding):
        raise TypeError(f"gauges={gauges!r}: pass a JaxBinding from gaugemath.backends.jax.bind(...), or None for "
                        "no gauges (then ddc_adam is optax.adamw)")
    binding = gauges if gauges is not None else JaxBinding((), ())
    veps = eps if vertical_eps is None else vertical_eps
    lay = binding.layout
    fams = list(binding.families)
    balanced = binding.frames == "balanced"
    if balanced:  # translations, scales (balanced jointly), rotations
        fams = [fams[i] for i in balanced_order(fams)]
    names = binding.entry_names()
    bases = [lay.base(i) for i in range(len(names))]
    projector = Projector(fams, names, bases, balanced) if fams else None
    balance = JointBalance(fams, names, bases) if balanced and fams else None

    def leaves_by_path(tree, what):
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        paths = [".".join(_key(k) for k in p) for p, _ in flat]
        return paths, [leaf for _, leaf in flat], treedef

    def bound_indices(paths, leaves):
        index = {p: i for i, p in enumerate(paths)}
        out = []
        for p in binding.paths:
            if p not in index:
                raise GaugeError(binding.gauge_of(p), p, "bound leaf is missing from the parameter pytree")
            out.append(index[p])
        return out

    def vertical_shapes(leaves, idx):
        return [((f.units, f.d_head, f.d_head) if f.kind == "head" else (f.units,)) for f in fams]

    def init(params):
        paths, leaves, treedef = leaves_by_path(params, "params")
        idx = bound_indices(paths, leaves)
        for leaf, p in zip(leaves, paths):
            if leaf.dtype not in (jnp.float32, jnp.float64, jnp.bfloat16):
                raise TypeError(f"leaf {p} has dtype {leaf.dtype}; ddc_adam supports float32/float64/bfloat16")
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, _state_dtype(x.dtype)), params)
        sd = _state_dtype(leaves[idx[0]].dtype) if idx else jnp.float32
        vert = tuple((jnp.zeros(s, sd), jnp.zeros(s, sd)) for s in vertical_shapes(leaves, idx)) \
            if vertical == "adam" else ()
        mom = ()
        if _muon is not None:
            bound = set(idx)
            mom = tuple(jnp.zeros(leaves[i].shape, _muon["canonical_ns_dtype"] if i in bound else leaves[i].dtype)
                        for i, p in enumerate(paths) if p in _muon["paths"])
        pivots = tuple(jnp.full((f.units,), -1, jnp.int32) for f in fams if f.kind == "plane")
        return DDCAdamState(jnp.zeros([], jnp.int32), zeros, jax.tree_util.tree_map(jnp.copy, zeros), vert, mom,
                            pivots, no_warm_start())

    def work_dtype():
        """The canonical frame's dtype: ``canonical_dtype``, else fp64 under ``jax_enable_x64``, else fp32."""
        return canonical_dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)

    def no_warm_start() -> tuple:
        """The joint balance's start before any step (NaN: the per-unit closed form starts there)."""
        return tuple(jnp.full((balance.families[k].units,), jnp.nan, work_dtype()) for k in balance.coupled) \
            if balance is not None else ()

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("ddc_adam needs params: call update(grads, state, params)")
        paths, g_leaves, treedef = leaves_by_path(grads, "grads")
        p_paths, p_leaves, _ = leaves_by_path(params, "params")
        if paths != p_paths:
            missing = [q for q in p_paths if q not in set(paths)]
            extra = [q for q in paths if q not in set(p_paths)]
            what = (f"missing from the gradients: {missing}" if missing else "") + \
                   (f"{'; ' if missing else ''}not in the parameters: {extra}" if extra else "")
            raise GaugeError("ddc", (missing or extra or ["<order>"])[0],
                             f"gradient and parameter pytrees do not match ({what or 'leaves in another order'})")
        for path, g, p in zip(paths, g_leaves, p_leaves):
            if g.shape != p.shape:
                raise GaugeError(binding.gauge_of(path), path, f"gradient shape {g.shape} != parameter shape {p.shape}")
        idx = bound_indices(paths, p_leaves)
        m_leaves = jax.tree_util.tree_leaves(state.mu)
        v_leaves = jax.tree_util.tree_leaves(state.nu)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in g_leaves]))
        if nonfinite == "raise":
            if isinstance(finite, jax.core.Tracer):
                raise GaugeError("ddc", "<all>", "nonfinite='raise' cannot be traced under jit; use 'skip'")
            if not bool(finite):
                bad = next(p for p, g in zip(paths, g_leaves) if not bool(jnp.all(jnp.isfinite(g))))
                raise GaugeError(binding.gauge_of(bad), bad, "non-finite gradient (nonfinite='raise')")
        count = state.count + 1
        t = count.astype(jnp.float32 if not jax.config.jax_enable_x64 else jnp.float64)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        new_m, new_v = list(m_leaves), list(v_leaves)
        updates = [jnp.zeros_like(p) for p in p_leaves]
        bound = set(idx)
        muon_pos = {i: k for k, i in enumerate(j for j, q in enumerate(paths) if _muon and q in _muon["paths"])}
        new_mom = list(state.momentum)
        alr = (_muon["adam_lr"](state.count) if callable(_muon["adam_lr"]) else _muon["adam_lr"]) if _muon else lr
        awd = _muon["adam_weight_decay"] if _muon else weight_decay
        for i, (g, p) in enumerate(zip(g_leaves, p_leaves)):  # optax.adamw / torch Muon, op for op
            if i in bound:
                continue
            if i in muon_pos:
                buf = state.momentum[muon_pos[i]]
                buf = buf + (1 - _muon["momentum"]) * (g - buf)
                d = _muon_direction(buf, g, t, _muon)
                o = newton_schulz(d, _muon["ns_coefficients"], _muon["ns_steps"], _muon["eps"], _muon["ns_dtype"])
                new_mom[muon_pos[i]] = buf
                adj = _adjust(_muon["adjust_lr_fn"], p.shape)
                updates[i] = (-(lr * weight_decay) * p - lr * adj * o.astype(p.dtype)).astype(p.dtype)
                continue
            sd = _state_dtype(p.dtype)
            gs = g.astype(sd)
            m = (1 - b1) * gs + b1 * m_leaves[i]
            v = (1 - b2) * (gs * gs) + b2 * v_leaves[i]
            m_hat = m / (1 - b1 ** t).astype(sd)
            if _muon is not None and _muon["adam_nesterov"]:  # optax.scale_by_adam(nesterov=True): NAdam
                m_hat = b1 * (m / (1 - b1 ** (t + 1)).astype(sd)) + (1 - b1) * (gs / (1 - b1 ** t).astype(sd))
            v_hat = v / (1 - b2 ** t).astype(sd)
            u = m_hat / (jnp.sqrt(v_hat) + eps) + awd * p.astype(sd)
            new_m[i], new_v[i] = m, v
            updates[i] = (-alr * u).astype(p.dtype)
        held = state.pivots or tuple(jnp.full((fams[f].units,), -1, jnp.int32) for f in planes)  # (older states)
        warm = state.balance or no_warm_start()
        new_vert, new_pivots, new_warm = state.vertical, held, warm
        if idx:
            bufs = [state.momentum[muon_pos[i]] if i in muon_pos else None for i in idx]
            steps, ms, vs, new_vert, bufs, converged, new_pivots, new_warm = _ddc_step(
                [p_leaves[i] for i in idx], [g_leaves[i] for i in idx], [m_leaves[i] for i in idx],
                [v_leaves[i] for i in idx], state.vertical, t, lr, bufs, alr, awd, held, warm)
            for i, buf in zip(idx, bufs):
                if i in muon_pos:
                    new_mom[muon_pos[i]] = buf
            for k, i in enumerate(idx):
                updates[i] = steps[k].astype(p_leaves[i].dtype)
                new_m[i], new_v[i] = ms[k], vs[k]
        update_ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(u)) for u in updates]))
        if idx:  # a joint balance that did not converge: the canonical point is undefined
            if nonfinite == "raise" and not bool(converged):
                raise GaugeError("balanced frame", ", ".join(fams[f].name for f in balance.members),
                                 "the joint balance of these scale families did not converge (nothing was changed)")
            update_ok = update_ok & converged
        if nonfinite == "raise" and not bool(update_ok):  # eager only (raise refuses to be traced, above)
            bad = next(p for p, u in zip(paths, updates) if not bool(jnp.all(jnp.isfinite(u))))
            cause = "the parameter is not finite" if not bool(jnp.all(jnp.isfinite(p_leaves[paths.index(bad)]))) \
                else "the update overflows"
            raise GaugeError(binding.gauge_of(bad), bad, f"{cause} (nonfinite='raise'; nothing was changed)")
        finite = finite & update_ok  # nonfinite='skip': a step whose update is not finite is skipped whole
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_m = [keep(a, b) for a, b in zip(new_m, m_leaves)]
        new_v = [keep(a, b) for a, b in zip(new_v, v_leaves)]
        updates = [jnp.where(finite, u, jnp.zeros_like(u)) for u in updates]
        new_vert = jax.tree_util.tree_map(keep, new_vert, state.vertical)
        new_mom = tuple(keep(a, b) for a, b in zip(new_mom, state.momentum))
        unflat = lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves)  # noqa: E731
        new_pivots = tuple(keep(a, b) for a, b in zip(new_pivots, held))
        new_warm = tuple(keep(a, b) for a, b in zip(new_warm, warm))
        new_state = DDCAdamState(jnp.where(finite, count, state.count), unflat(new_m), unflat(new_v), new_vert,
                                 new_mom, new_pivots, new_warm)
        return unflat(updates), new_state

    planes = [f for f, fam in enumerate(fams) if fam.kind == "plane"]

    def _ddc_step(params, grads, ms, vs, vert_state, t, lr, bufs, alr, awd, held, warm):
        muon_lr = lr
        if _muon is not None:  # the step is −ref (u + λθ̃): ref = lr, or while lr = 0 (a warmup) adam_lr (or 1)
            lr = jnp.where(muon_lr != 0, muon_lr, jnp.where(alr != 0, alr, 1.0))
        sd = _state_dtype(params[0].dtype)
        work = work_dtype()
        n = len(params)
        theta = entries(lay, to_work(lay, params, work))
        grad = entries(lay, to_work(lay, grads, work))
        ms, vs = to_work(lay, ms), to_work(lay, vs)  # moments live in the stored layout, step in the work one
        bufs = [None if b is None else to_work_one(lay, k, b) for k, b in enumerate(bufs)]
        if len(held) != len(planes) or any(tuple(h.shape) != (fams[f].units,) for h, f in zip(held, planes)):
            raise GaugeError("ddc", "<state>", f"the state's plane pivots {[tuple(h.shape) for h in held]} do not "
                             f"match the binding's RoPE planes {[(fams[f].units,) for f in planes]} (a state of "
                             "another binding or version)")
        pivots = dict(zip(planes, held))
        want = [(balance.families[k].units,) for k in balance.coupled] if balance is not None else []
        if [tuple(w.shape) for w in warm] != want:
            raise GaugeError("ddc", "<state>", f"the state's balance warm start {[tuple(w.shape) for w in warm]} does "
                             f"not match the binding's coupled scale families {want} (a state of another binding)")
        start = {"logs": warm}
        theta, grad, frames, masks, converged = canonicalise(fams, theta, lay, balance, grad, pivots, start)
        fact = projector.factor(theta, masks)

        def off(f, c):  # vertical coordinates of degenerate units: none
            m = masks[f]
            return jnp.where(m.reshape(m.shape[0], *([1] * (c.ndim - 1))), 0.0, c)
        rtol = math.sqrt(float(jnp.finfo(params[0].dtype).eps)) if vertical_rtol is None else vertical_rtol
        rhs_g = []
        for f, fam in enumerate(fams):
            c = off(f, fam.coords(theta, grad))
            rhs_g.append(jnp.where(jnp.abs(c) <= fam.noise_floor(theta, grad, rtol), 0.0, c)[..., None])
        coef_g = projector.solve(fact, rhs_g)
        for fam, c in zip(fams, coef_g):
            grad = sync(lay, grad, fam.lift(c[..., 0], theta, grad, alpha=-1.0))
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        new_ms, new_vs, u, new_bufs = [], [], [], []
        for k, (m, v, g) in enumerate(zip(ms, vs, grad)):
            if bufs[k] is not None:  # Muon in the canonical frame (ddc_muon)
                buf = bufs[k] + (1 - _muon["momentum"]) * (g.astype(bufs[k].dtype) - bufs[k])
                d = _muon_direction(buf, g.astype(buf.dtype), t, _muon)
                o = newton_schulz(d, _muon["ns_coefficients"], _muon["ns_steps"], _muon["eps"],
                                  _muon["canonical_ns_dtype"])
                new_ms.append(m)
                new_vs.append(v)
                new_bufs.append(buf)
                o = o.astype(work) * _adjust(_muon["adjust_lr_fn"], params[k].shape)
                u.append((muon_lr / lr) * o + (muon_lr / lr - 1) * weight_decay * theta[k])  # = o at lr = ref
                continue
            gs = g.astype(sd)  # torch's Adam: lerp, addcmul, sqrt(v)/sqrt(bc2) + eps
            m = m + (1 - b1) * (gs - m)
            v = b2 * v + (1 - b2) * (gs * gs)
            new_ms.append(m)
            new_vs.append(v)
            new_bufs.append(None)
            m_hat = m / bc1.astype(sd)
            if _muon is not None and _muon["adam_nesterov"]:
                m_hat = b1 * (m / (1 - b1 ** (t + 1)).astype(sd)) + (1 - b1) * (gs / bc1.astype(sd))
            d = (m_hat / (jnp.sqrt(v) / jnp.sqrt(bc2).astype(sd) + eps)).astype(work)
            if _muon is not None:  # lr (u + λθ̃) = adam_lr (d + λ_a θ̃)
                d = (alr / lr) * (d + awd * theta[k]) - weight_decay * theta[k]
            u.append(d)
        u = entries(lay, u)
        rhs = [jnp.stack([off(k, f.coords(theta, u)), off(k, f.coords(theta, theta))], axis=-1)
               for k, f in enumerate(fams)]
        coef = projector.solve(fact, rhs)
        delta = entries(lay, [x + weight_decay * th for x, th in zip(u[:n], theta[:n])])
        new_vert = []
        for f, fam in enumerate(fams):
            a = -(coef[f][..., 0] + weight_decay * coef[f][..., 1])
            if vertical == "sgd":
                a = a + coef_g[f][..., 0] + weight_decay * coef[f][..., 1]
            elif vertical == "adam":
                step, mv = _vertical_adam(fam, fact["grams"][f], coef_g[f][..., 0], vert_state[f], bc1, bc2, sd)
                new_vert.append(mv)
                a = a + step + weight_decay * coef[f][..., 1]
            delta = sync(lay, delta, fam.lift(a, theta, delta))
        # Δθ̃ = −lr·δ mapped back as a tangent vector, Δθ = D(h)⁻¹Δθ̃ (inverse frames' linear parts in reverse
        # order; a translation's is the identity): the update itself, so θ + Δθ rounds θ once (not h⁻¹·(θ̃ + Δθ̃)
        # minus θ, which rounds θ in the work dtype and cancels)
        step = entries(lay, [-lr * d for d in delta[:n]])
        for fam, h in zip(reversed(fams), reversed(frames)):
            if fam.kind != "translate":
                step = sync(lay, step, fam.act(h, step, inverse=True))
        back = lambda xs: [x if x is None else from_work(lay, k, x) for k, x in enumerate(xs)]  # noqa: E731
        return (back(step[:n]), back(new_ms), back(new_vs), (tuple(new_vert) if vertical == "adam" else vert_state),
                back(new_bufs), converged, tuple(pivots[f] for f in planes), start["logs"])

    def _vertical_adam(fam, gram, c, mv, bc1, bc2, sd):
        if fam.kind == "head":
            lam = jnp.diagonal(gram, axis1=1, axis2=2)
            norm = jnp.sqrt(lam[:, :, None] + lam[:, None, :]) + jnp.eye(lam.shape[-1], dtype=lam.dtype)
        else:
            norm = jnp.sqrt(gram)
        m, v = mv
        chat = (c * norm).astype(sd)
        m = m + (1 - b1) * (chat - m)
        v = b2 * v + (1 - b2) * (chat * chat)
        step = ((m / bc1.astype(sd)) / (jnp.sqrt(v) / jnp.sqrt(bc2).astype(sd) + veps)).astype(c.dtype) / norm
        return step, (m, v)

    return optax.GradientTransformation(init, update)
