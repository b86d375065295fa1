"""The built-in gauges: each is a group, an action, a canonical frame and a reference layer.

Widths default to the smallest instance that shows the structure (two units, two channels,
two RoPE planes); the per-unit / per-channel / per-plane pattern makes the proof at these
widths cover every width, and the certificates can be regenerated at any other width.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

from . import layers
from .errors import GaugeError
from .exact import canonical, norm
from .gauge import Catalogue, ComposedGauge, Gauge, GaugeBase, Params, ReferenceModel, block_symbols
from .groups import direct_sum, orthogonal, plane_rotations, positive_scalings, translations

FRAMES_RESCALE = ("balance", "anchor")


# ------------------------------------------------------------------------------ shift
def ce_shift(vocab: int = 3, d: int = 2, *, weight: str = "W", bias: str = "b", model=None) -> Gauge:
    """Cross-entropy logit shift: ``W → W + 1 vᵀ``, ``b → b + c 1`` on the head (``V×d``, ``V``).

    Group ``(R^{d+1}, +)``; frame: centre over the class axis.
    """
    blocks = {weight: block_symbols(weight, vocab, d), bias: block_symbols(bias, vocab)}

    def action(g, p):
        v = g[0, 1 : d + 1]  # 1×d
        return {weight: p[weight] + sp.ones(vocab, 1) * v, bias: p[bias] + g[0, d + 1] * sp.ones(vocab, 1)}

    def frame(p):
        h = sp.eye(d + 2)
        for j in range(d):
            h[0, j + 1] = -sum(p[weight][:, j]) / vocab
        h[0, d + 1] = -sum(p[bias]) / vocab
        return h

    if model is None:
        x = block_symbols("x", d)
        targets = layers.soft_targets("p", vocab)

        def forward(p, inp, stage):
            z = layers.affine(p[weight], inp["x"], p[bias], stage)
            return [layers.cross_entropy(z, inp["p"])]

        model = ReferenceModel(
            description=f"logits z = W x + b (V={vocab}, d={d}); L = log Σ exp z_i - Σ p_i z_i, Σ p_i = 1",
            inputs={"x": x, "p": targets},
            forward=forward,
            generic_loss=False,
            assumptions=("soft targets sum to one",),
        )
    return Gauge(
        "ce_shift",
        summary="cross-entropy is unchanged when the same affine function is added to every logit",
        group=translations(d + 1),
        blocks=blocks,
        action=action,
        frame=frame,
        frame_name="centre over classes",
        model=model,
        notes=("exact for any soft targets with Σ p_i = 1; a tied embedding/head breaks it",),
    )


# ---------------------------------------------------------------------------- rescale
def _rescale_frame(name: str, frame: str, rows: Sequence[str], cols: Sequence[str], hidden: int):
    """Per-unit frame for ``(α r_k, c_k / α)``: ``balance`` (‖αr‖ = ‖c/α‖) or ``anchor`` (‖c/α‖ = 1)."""
    if frame not in FRAMES_RESCALE:
        raise ValueError(f"gauge '{name}': unknown frame {frame!r}; choose from {FRAMES_RESCALE}")

    def h(p):
        alphas = []
        for k in range(hidden):
            r = [e for b in rows for e in p[b][k, :]]
            c = [e for b in cols for e in p[b][:, k]]
            alphas.append(norm(c) if frame == "anchor" else sp.sqrt(norm(c) / norm(r)))
        return sp.diag(*alphas)

    return h


def relu_rescale(d_in: int = 2, hidden: int = 2, d_out: int = 2, *, frame: str = "balance",
                 names=("W_in", "b_in", "W_out"), model=None) -> Gauge:
    """ReLU per-unit rescale ``(W_in[k], b_in[k], W_out[:,k]) → (α W_in[k], α b_in[k], W_out[:,k]/α)``.

    Group ``(R_{>0})^hidden``; conserved charge per unit ``‖W_in[k]‖² + b_in[k]² - ‖W_out[:,k]‖²``.
    """
    w_in, b_in, w_out = names
    blocks = {w_in: block_symbols(w_in, hidden, d_in), b_in: block_symbols(b_in, hidden),
              w_out: block_symbols(w_out, d_out, hidden)}

    def action(g, p):
        return {w_in: g * p[w_in], b_in: g * p[b_in], w_out: p[w_out] * g.inv()}

    if model is None:
        def forward(p, inp, stage):
            return list(layers.relu_mlp(inp["x"], p[w_in], p[b_in], p[w_out], inp["b_out"], stage))

        model = ReferenceModel(
            description=f"y = W_out relu(W_in x + b_in) + b_out (d_in={d_in}, hidden={hidden}, d_out={d_out})",
            inputs={"x": block_symbols("x", d_in), "b_out": block_symbols("b_out", d_out)},
            forward=forward,
            assumptions=("relu declared positively homogeneous of degree 1",),
        )
    return Gauge(
        "relu_rescale",
        summary="ReLU is positively homogeneous, so each hidden unit can be rescaled in and out",
        group=positive_scalings(hidden),
        blocks=blocks,
        action=action,
        frame=_rescale_frame("relu_rescale", frame, (w_in, b_in), (w_out,), hidden),
        frame_name=f"{frame} per unit",
        model=model,
        notes=("Euler's identity z relu'(z) = relu(z) is used where z != 0 (the kink is a null set)",),
    )


def swiglu_rescale(d_in: int = 2, hidden: int = 2, d_out: int = 2, *, frame: str = "balance",
                   names=("W_gate", "W_up", "W_down"), model=None) -> Gauge:
    """SwiGLU per-unit rescale ``(W_up[k], W_down[:,k]) → (α W_up[k], W_down[:,k]/α)``, ``α ≠ 0``.

    The gate is untouched: SiLU has no scaling property. Sign flips ``α = -1`` form the
    residual discrete group of the frame (Adam commutes with per-coordinate sign flips).
    """
    w_gate, w_up, w_down = names
    blocks = {w_up: block_symbols(w_up, hidden, d_in), w_down: block_symbols(w_down, d_out, hidden)}

    def action(g, p):
        return {w_up: g * p[w_up], w_down: p[w_down] * g.inv()}

    if model is None:
        def forward(p, inp, stage):
            return list(layers.swiglu_mlp(inp["x"], inp[w_gate], p[w_up], p[w_down], stage))

        model = ReferenceModel(
            description=f"y = W_down (silu(W_gate x) ⊙ W_up x) (d_in={d_in}, hidden={hidden}, d_out={d_out})",
            inputs={"x": block_symbols("x", d_in), w_gate: block_symbols(w_gate, hidden, d_in)},
            forward=forward,
        )
    return Gauge(
        "swiglu_rescale",
        summary="the up-projection row and down-projection column of a SwiGLU unit rescale together",
        group=positive_scalings(hidden, signed=True),
        blocks=blocks,
        action=action,
        frame=_rescale_frame("swiglu_rescale", frame, (w_up,), (w_down,), hidden),
        frame_name=f"{frame} per unit (residual group: sign flips)",
        model=model,
        notes=("the gate W_gate carries no rescale: silu(c z) != c silu(z)",),
    )


# ----------------------------------------------------------------------------- norms
def norm_gain(kind: str = "layernorm", d: int = 2, d_out: int = 2, *, prefix: str = "",
              consumers: Sequence[str] = ("W",), model=None, name: str = "norm_scale") -> Gauge:
    """Norm gain–consumer rescale: ``(γ_i, β_i, W[:, i]) → (α γ_i, α β_i, W[:, i]/α)`` per channel.

    ``kind`` is ``"layernorm"`` (gain and bias) or ``"rmsnorm"`` (gain only). Every consumer
    matrix (``m×d``) reading the normalised output has its column ``i`` divided by ``α_i``.
    Frame: anchor on the gain, ``|γ̃_i| = 1``.
    """
    gain, bias = f"{prefix}gain", f"{prefix}bias"
    blocks: Params = {gain: block_symbols(gain, d)}
    if kind == "layernorm":
        blocks[bias] = block_symbols(bias, d)
    elif kind != "rmsnorm":
        raise ValueError(f"gauge '{name}': unknown norm kind {kind!r}")
    for c in consumers:
        blocks[c] = block_symbols(c, d_out, d)

    def action(g, p):
        out = {gain: g * p[gain], **{c: p[c] * g.inv() for c in consumers}}
        if bias in blocks:
            out[bias] = g * p[bias]
        return out

    def frame(p):
        return sp.diag(*[1 / norm([e]) for e in p[gain]])

    if model is None:
        eps = sp.Symbol("epsilon", positive=True)

        def forward(p, inp, stage):
            n = layers.normalise(kind, inp["x"], eps, stage)
            y = layers.gain_bias(n, p[gain], p.get(bias), stage)
            return [e for c in consumers for e in layers.affine(p[c], y, None, stage)]

        model = ReferenceModel(
            description=(f"y = W ({'γ ⊙ LN(x) + β' if kind == 'layernorm' else 'γ ⊙ RMSNorm(x)'}) "
                         f"(d={d}, d_out={d_out}), ε > 0"),
            inputs={"x": block_symbols("x", d)},
            forward=forward,
            assumptions=("the normalised output feeds only the consumers (no residual branch)",),
            constants={eps: sp.Rational(1, 10**5)},
        )
    return Gauge(
        name,
        summary=f"{kind} gain (and bias) rescale against the columns of the matrices that read it",
        group=positive_scalings(d),
        blocks=blocks,
        action=action,
        frame=frame,
        frame_name="anchor |gain_i| = 1",
        model=model,
        notes=("a norm whose output also feeds a residual stream breaks this gauge",),
    )


def norm_producer(kind: str = "layernorm", d: int = 3, d_in: int = 1) -> Gauge:
    """Producer scale-invariance: a weight whose output feeds a norm, ``(W, b) → s (W, b)``, ``s > 0``.

    Exact for ``ε = 0`` only (with ``ε > 0`` the residual is printed in the certificate).
    Frame: unit norm ``‖(W, b)‖ = 1``; charge ``‖W‖² + ‖b‖²``.
    """
    blocks = {"W_p": block_symbols("W_p", d, d_in), "b_p": block_symbols("b_p", d)}

    def action(g, p):
        return {"W_p": g[0, 0] * p["W_p"], "b_p": g[0, 0] * p["b_p"]}

    def frame(p):
        return sp.Matrix([[1 / norm(list(p["W_p"]) + list(p["b_p"]))]])

    def forward(p, inp, stage, eps=sp.S.Zero):
        q = layers.affine(p["W_p"], inp["x"], p["b_p"], stage)
        return list(layers.normalise(kind, q, eps, stage))

    model = ReferenceModel(
        description=f"y = {'LN' if kind == 'layernorm' else 'RMSNorm'}(W_p x + b_p) with ε = 0 (d={d}, d_in={d_in})",
        inputs={"x": block_symbols("x", d_in)},
        forward=forward,
        assumptions=("ε = 0: with ε > 0 the invariance is only approximate",),
    )
    return Gauge(
        "norm_scale",
        summary=f"a weight feeding a {kind} is scale-invariant",
        group=positive_scalings(1),
        blocks=blocks,
        action=action,
        frame=frame,
        frame_name="unit norm",
        model=model,
    )


def norm_scale(kind: str = "layernorm", d: int | None = None, d_out: int | None = None) -> Gauge:
    """LayerNorm/RMSNorm scale gauges.

    ``kind``: ``"layernorm"`` or ``"rmsnorm"`` (gain–consumer rescale of ``d`` channels with a
    ``d_out×d`` consumer, see :func:`norm_gain`; ``d`` defaults to 2), or ``"producer"`` /
    ``"producer_rmsnorm"`` (scale-invariance of the ``d×1`` weight that feeds the norm, see
    :func:`norm_producer`; ``d`` defaults to 3; ``d_out`` does not apply and is refused).
    """
    if kind in ("producer", "producer_rmsnorm"):
        if d_out is not None:
            raise ValueError(f"gauge 'norm_scale', block 'W_p': d_out={d_out} does not apply to kind={kind!r}")
        return norm_producer("layernorm" if kind == "producer" else "rmsnorm", d=3 if d is None else d)
    return norm_gain(kind, 2 if d is None else d, 2 if d_out is None else d_out)


# -------------------------------------------------------------------------- rotation
def _plane_frame(q: str, planes: int):
    """SO(2) per plane: rotate the first column of ``W_Q``'s plane rows onto ``e_1``."""

    def frame(p):
        hs = []
        for j in range(planes):
            u1, u2 = p[q][2 * j, 0], p[q][2 * j + 1, 0]
            r = norm([u1, u2])
            hs.append(sp.Matrix([[u1, u2], [-u2, u1]]) / r)
        return sp.diag(*hs)

    return frame


def _block_frame(frames):
    """Block-diagonal frame from per-head frames (each may take ``stage``)."""

    def frame(p, stage=canonical):
        return sp.diag(*[f(p, stage=stage) for f in frames])

    return frame


def _gram_schmidt_frame(q: str, k: str, d_head: int, rows: slice = slice(None)):
    """O(d): ``h = Qᵀ`` where ``A = QR`` is the QR factorisation (positive diagonal) of the first
    ``d_head`` columns ``A`` of ``[W_Q | W_K]``.

    Computed as ``h = R⁻ᵀ Aᵀ`` with ``R`` the Cholesky factor of the Gram matrix ``AᵀA``;
    since ``(SA)ᵀ(SA) = AᵀA`` for orthogonal ``S``, ``h(S·θ) = R⁻ᵀAᵀSᵀ = h(θ) S⁻¹``.
    """

    def frame(p, stage=canonical):
        both = sp.Matrix.hstack(p[q][rows, :], p[k][rows, :])
        if both.cols < d_head:
            raise GaugeError("head_rotation", q, f"the Gram–Schmidt frame needs 2·d_model >= d_head "
                             f"(d_model={both.cols // 2}, d_head={d_head}): the orbit is degenerate")
        a = both[:, :d_head]
        gram = (a.T * a).applyfunc(stage)
        lower = gram.cholesky(hermitian=False)  # AᵀA = L Lᵀ, L = Rᵀ lower triangular
        return lower.lower_triangular_solve(a.T)  # h = L⁻¹ Aᵀ

    return frame


def head_rotation(rope: bool = True, d_model: int = 2, d_head: int | None = None, positions: int | None = None,
                  *, heads: int = 1, names=("W_Q", "W_K"), model=None) -> Gauge:
    """Per-head rotation of the query/key output dims: ``(W_Q, W_K) → (S W_Q, S W_K)``.

    ``W_Q, W_K`` are ``(heads·d_head)×d_model`` (heads stacked by rows); ``S`` is block-diagonal
    with one block per head. Without RoPE each block is in ``O(d_head)``. With RoPE only the
    commutant of the position rotations survives: ``SO(2)`` per frequency plane (derived in the
    certificate for distinct frequencies).
    """
    q, k = names
    if d_head is None:
        d_head = 4 if rope else 3
    if positions is None:  # without RoPE the scores do not depend on position: one suffices
        positions = 2 if rope else 1
    if rope and d_head % 2:
        raise ValueError(f"gauge 'head_rotation', block '{q}': d_head={d_head} must be even with RoPE")
    if heads < 1:
        raise ValueError(f"gauge 'head_rotation', block '{q}': heads={heads} must be >= 1")
    planes = d_head // 2
    rows = heads * d_head
    blocks = {q: block_symbols(q, rows, d_model), k: block_symbols(k, rows, d_model)}

    def action(g, p):
        return {q: g * p[q], k: g * p[k]}

    if model is None:
        xs = [block_symbols(f"x{m}", d_model) for m in range(positions)]
        rots = [layers.rope_rotation(f"tau{m}", planes) for m in range(positions)] if rope else None

        def forward(p, inp, stage):
            scores = []
            for h in range(heads):
                wq, wk = p[q][h * d_head : (h + 1) * d_head, :], p[k][h * d_head : (h + 1) * d_head, :]
                qs = [(wq * inp[f"x{m}"]).applyfunc(stage) for m in range(positions)]
                ks = [(wk * inp[f"x{m}"]).applyfunc(stage) for m in range(positions)]
                if rope:
                    qs = [(rots[m] * v).applyfunc(stage) for m, v in enumerate(qs)]
                    ks = [(rots[m] * v).applyfunc(stage) for m, v in enumerate(ks)]
                scores += layers.attention_scores(qs, ks, stage)
            return scores

        model = ReferenceModel(
            description=(f"causal scores s_mn = (R_m W_Q x_m)ᵀ (R_n W_K x_n) (d_model={d_model}, d_head={d_head}, "
                         + (f"{heads} heads, " if heads > 1 else "")
                         + f"{positions} positions{', RoPE R_m per plane' if rope else ', no RoPE'})"),
            inputs={f"x{m}": xs[m] for m in range(positions)},
            forward=forward,
            assumptions=("attention depends on W_Q, W_K only through the scores",),
            constants={k: v for m in range(positions) if rope
                       for k, v in layers.rope_values(f"tau{m}", planes, m).items()},
        )
    if rope:
        group, frame = plane_rotations(heads * planes), _plane_frame(q, heads * planes)
    elif heads == 1:
        group, frame = orthogonal(d_head), _gram_schmidt_frame(q, k, d_head)
    else:
        group = direct_sum([orthogonal(d_head)] * heads, [f"head{h}" for h in range(heads)])
        frames = [_gram_schmidt_frame(q, k, d_head, rows=slice(h * d_head, (h + 1) * d_head)) for h in range(heads)]
        frame = _block_frame(frames)
    return Gauge(
        "head_rotation",
        summary="scores q·k are unchanged when queries and keys of a head rotate together"
        + (" (RoPE: per-plane SO(2), the commutant of the position rotations)" if rope else ""),
        group=group,
        blocks=blocks,
        action=action,
        frame=frame,
        frame_name="plane angle of W_Q[:, 0]" if rope else "Gram–Schmidt of [W_Q | W_K] columns",
        model=model,
    )


def rope_commutant(d_head: int) -> list[sp.Matrix]:
    """Basis of ``{M ∈ so(d_head) : [M, Ω] = 0}`` for generic (distinct) RoPE frequencies ``ω_j``.

    Derived by solving the linear system ``MΩ - ΩM = 0`` over ``Q(ω)``.
    """
    planes = d_head // 2
    omega = layers.rope_generator(sp.symbols(f"omega_0:{planes}", positive=True))
    pairs = [(i, j) for i in range(d_head) for j in range(i + 1, d_head)]
    ms = sp.symbols(f"m_0:{len(pairs)}")
    m = sp.zeros(d_head, d_head)
    for (i, j), s in zip(pairs, ms):
        m[i, j], m[j, i] = s, -s
    eqs = [e for e in (m * omega - omega * m) if e != 0]
    sol = sp.solve(eqs, ms, dict=True)
    general = m.subs(sol[0]) if sol else m
    free = sorted(general.free_symbols & set(ms), key=str)
    return [general.subs({f: (1 if f == g else 0) for f in free}) for g in free]


# -------------------------------------------------------------------------- the block
def transformer_block(mlp: str = "swiglu", norm_kind: str = "rmsnorm", *, d_model: int = 2, d_head: int = 2,
                      d_ff: int = 2, vocab: int = 3, positions: int = 2) -> ComposedGauge:
    """All catalogue gauges of a pre-norm transformer block with RoPE attention and a CE head.

    ``x → h = x + W_O attn(RoPE(W_Q n₁), RoPE(W_K n₁), W_V n₁)``, ``n₁ = γ₁ ⊙ norm(x) (+β₁)``;
    ``h → h + MLP(γ₂ ⊙ norm(h) (+β₂))``; logits ``z = W_head (γ_f ⊙ norm(h₂) (+β_f)) + b_head``.
    Several gauges act on one matrix: ``W_Q`` rows (rotation) and columns (ln1 gain), the MLP
    input rows (unit rescale) and columns (ln2 gain), ``W_head`` rows (shift) and columns (lnf gain).
    """
    if mlp not in ("swiglu", "relu"):
        raise ValueError(f"gauge 'transformer_block': unknown mlp {mlp!r} (expected 'swiglu' or 'relu')")
    eps = sp.Symbol("epsilon", positive=True)
    mlp_names = ("mlp.W_gate", "mlp.W_up", "mlp.W_down") if mlp == "swiglu" else ("mlp.W_in", "mlp.b_in", "mlp.W_out")
    consumers2 = mlp_names[:2] if mlp == "swiglu" else (mlp_names[0],)
    ln1 = norm_gain(norm_kind, d_model, d_head, prefix="ln1.", consumers=("attn.W_Q", "attn.W_K", "attn.W_V"),
                    model=_NO_MODEL, name="ln1_gain")
    rot = head_rotation(True, d_model, d_head, positions, names=("attn.W_Q", "attn.W_K"), model=_NO_MODEL)
    ln2 = norm_gain(norm_kind, d_model, d_ff, prefix="ln2.", consumers=consumers2, model=_NO_MODEL,
                    name="ln2_gain")
    if mlp == "swiglu":
        unit = swiglu_rescale(d_model, d_ff, d_model, frame="anchor", names=mlp_names, model=_NO_MODEL)
    else:
        unit = relu_rescale(d_model, d_ff, d_model, frame="anchor", names=mlp_names, model=_NO_MODEL)
    lnf = norm_gain(norm_kind, d_model, vocab, prefix="lnf.", consumers=("head.W",), model=_NO_MODEL,
                    name="lnf_gain")
    shift = ce_shift(vocab, d_model, weight="head.W", bias="head.b", model=_NO_MODEL)
    factors = [ln1, ln2, lnf, rot, unit, shift]
    fixed = {"attn.W_O": block_symbols("attn.W_O", d_model, d_head)}
    if mlp == "swiglu":
        fixed["mlp.W_gate"] = block_symbols("mlp.W_gate", d_ff, d_model)
    xs = {f"x{m}": block_symbols(f"x{m}", d_model) for m in range(positions)}
    rots = [layers.rope_rotation(f"tau{m}", d_head // 2) for m in range(positions)]
    bias = norm_kind == "layernorm"

    def forward(p, inp, stage):
        p = {**inp, **p}
        n1 = [layers.gain_bias(layers.normalise(norm_kind, p[f"x{m}"], eps, stage), p["ln1.gain"],
                               p.get("ln1.bias") if bias else None, stage) for m in range(positions)]
        qs = [(rots[m] * layers.affine(p["attn.W_Q"], n1[m], None, stage)).applyfunc(stage) for m in range(positions)]
        ks = [(rots[m] * layers.affine(p["attn.W_K"], n1[m], None, stage)).applyfunc(stage) for m in range(positions)]
        vs = [layers.affine(p["attn.W_V"], n1[m], None, stage) for m in range(positions)]
        att = layers.causal_attention(qs, ks, vs, stage)
        hs = [(p[f"x{m}"] + p["attn.W_O"] * att[m]).applyfunc(stage) for m in range(positions)]
        outs = []
        for m in range(positions):
            n2 = layers.gain_bias(layers.normalise(norm_kind, hs[m], eps, stage), p["ln2.gain"],
                                  p.get("ln2.bias") if bias else None, stage)
            if mlp == "swiglu":
                f = layers.swiglu_mlp(n2, p["mlp.W_gate"], p["mlp.W_up"], p["mlp.W_down"], stage)
            else:
                f = layers.relu_mlp(n2, p["mlp.W_in"], p["mlp.b_in"], p["mlp.W_out"], None, stage)
            h2 = (hs[m] + f).applyfunc(stage)
            nf = layers.gain_bias(layers.normalise(norm_kind, h2, eps, stage), p["lnf.gain"],
                                  p.get("lnf.bias") if bias else None, stage)
            z = layers.affine(p["head.W"], nf, p["head.b"], stage)
            outs.extend(stage(z[i] - z[0]) for i in range(1, vocab))
        return outs

    model = ReferenceModel(
        description=(f"pre-{norm_kind} block, RoPE attention (1 head, d_head={d_head}), {mlp} MLP (d_ff={d_ff}), "
                     f"CE head (V={vocab}); d_model={d_model}, {positions} positions"),
        inputs={**fixed, **xs},
        forward=forward,
        assumptions=("L = Σ_m CE(z_m, p_m) depends on the logits only through z_m,i - z_m,0 (ce_shift certificate)",
                     "RoPE blocks per position and plane are arbitrary c I + s J (rotations when c² + s² = 1)"),
        constants={eps: sp.Rational(1, 10**5),
                   **{k: v for m in range(positions)
                      for k, v in layers.rope_values(f"tau{m}", d_head // 2, m).items()}},
    )
    return ComposedGauge(
        "transformer_block",
        summary=f"product of all catalogue gauges on a pre-{norm_kind} RoPE transformer block with a {mlp} MLP",
        factors=factors,
        model=model,
        notes=("the factor-by-factor frame above uses anchors for the unit rescale (‖W_out[:,k]‖ = 1) because "
               "balancing one factor after another on a block that two factors touch does not compose "
               "(frames='per_family'); the jointly balanced frame (frames='balanced', the default) minimises "
               "‖s·C(θ)‖² over all scalings at once: its checks are the 'balanced frame' rows",),
    )


#: Placeholder reference model for factors of a composed gauge (the composite owns the model).
_NO_MODEL = ReferenceModel(description="(factor of a composed gauge)", inputs={}, forward=lambda p, i, s: [])


CATALOGUE = Catalogue({
    "ce_shift": ce_shift,
    "relu_rescale": relu_rescale,
    "swiglu_rescale": swiglu_rescale,
    "norm_scale": norm_scale,
    "head_rotation": head_rotation,
    "transformer_block": transformer_block,
})

#: Every named construction that gets a certificate: (certificate, variant, builder).
CONSTRUCTIONS = {
    "ce_shift": [("default", lambda: ce_shift())],
    "relu_rescale": [("balance frame", lambda: relu_rescale()), ("anchor frame", lambda: relu_rescale(frame="anchor"))],
    "swiglu_rescale": [("balance frame", lambda: swiglu_rescale())],
    "norm_scale": [("layernorm gain", lambda: norm_scale("layernorm")), ("rmsnorm gain", lambda: norm_scale("rmsnorm")),
                   ("producer (layernorm)", lambda: norm_scale("producer")),
                   ("producer (rmsnorm)", lambda: norm_scale("producer_rmsnorm"))],
    "head_rotation": [("rope", lambda: head_rotation(True)), ("no rope, O(3)", lambda: head_rotation(False))],
    "transformer_block": [("swiglu + rmsnorm", lambda: transformer_block("swiglu", "rmsnorm")),
                          ("relu + layernorm", lambda: transformer_block("relu", "layernorm"))],
}


def gauges() -> Catalogue:
    """The catalogue: ``name -> constructor`` for the built-in gauges."""
    return CATALOGUE


def gauge(name: str, **options) -> GaugeBase:
    """Build catalogue gauge ``name`` with ``options`` (widths, kind, frame …)."""
    if name not in CATALOGUE:
        raise KeyError(f"unknown gauge {name!r}; known: {', '.join(CATALOGUE)}")
    return CATALOGUE[name](**options)
