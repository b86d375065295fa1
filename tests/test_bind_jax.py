"""JAX: gauges detected from the jaxpr of a flax-style model (kernels stored ``(in, out)``), by the same
detector as torch, checked on the model, and ddc_adam exactly equivariant under a hand-written gauge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from gaugemath.backends import jax as gj

from gaugemath.errors import GaugeError

jax.config.update("jax_enable_x64", True)
D, H, DH, FF, V = 8, 2, 4, 12, 5


def _params(seed=0):
    rng = np.random.default_rng(seed)

    def p(*s):
        return jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]))

    return {"ln1": {"scale": 1 + 0.1 * p(D), "bias": 0.1 * p(D)},
            "attn": {"wq": p(D, D), "wk": p(D, D), "wv": p(D, D), "wo": p(D, D)},
            "ln2": {"scale": 1 + 0.1 * p(D), "bias": 0.1 * p(D)},
            "mlp": {"w1": p(D, FF), "b1": 0.1 * p(FF), "w2": p(FF, D)},
            "lnf": {"scale": 1 + 0.1 * p(D), "bias": 0.1 * p(D)},
            "head": {"kernel": p(D, V), "bias": 0.1 * p(V)}}


def _ln(x, s, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(v + 1e-5) * s + b


def apply(p, x):
    """A pre-norm block written as flax writes it: ``x @ kernel``, heads by reshape, einsum attention."""
    h = _ln(x, p["ln1"]["scale"], p["ln1"]["bias"])
    b, t, _ = x.shape
    q, k, v = ((h @ p["attn"][w]).reshape(b, t, H, DH) for w in ("wq", "wk", "wv"))
    a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(DH), axis=-1)
    x = x + jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, D) @ p["attn"]["wo"]
    h = _ln(x, p["ln2"]["scale"], p["ln2"]["bias"])
    x = x + jax.nn.relu(h @ p["mlp"]["w1"] + p["mlp"]["b1"]) @ p["mlp"]["w2"]
    return _ln(x, p["lnf"]["scale"], p["lnf"]["bias"]) @ p["head"]["kernel"] + p["head"]["bias"]


def transform(p, seed=5):
    """The hand-written group element, on (in, out) kernels: an input channel is a kernel *row*."""
    rng = np.random.default_rng(seed)
    scale = lambda n: jnp.exp(jnp.asarray(rng.uniform(-1, 1, n)))  # noqa: E731
    q = jax.tree_util.tree_map(lambda x: x, p)
    for ln, consumers in (("ln1", [("attn", "wq"), ("attn", "wk"), ("attn", "wv")]), ("ln2", [("mlp", "w1")]),
                          ("lnf", [("head", "kernel")])):
        a = scale(D)
        q[ln] = {"scale": q[ln]["scale"] * a, "bias": q[ln]["bias"] * a}
        for m, w in consumers:
            q[m] = dict(q[m], **{w: q[m][w] / a[:, None]})
    s = scale(FF)
    q["mlp"] = dict(q["mlp"], w1=q["mlp"]["w1"] * s[None, :], b1=q["mlp"]["b1"] * s, w2=q["mlp"]["w2"] / s[:, None])
    for h in range(H):
        r, _ = np.linalg.qr(rng.normal(size=(DH, DH)))
        cols = slice(h * DH, (h + 1) * DH)
        for w in ("wq", "wk"):
            q["attn"] = dict(q["attn"], **{w: q["attn"][w].at[:, cols].set(q["attn"][w][:, cols] @ r.T)})
    v = jnp.asarray(rng.normal(size=D))
    q["head"] = {"kernel": q["head"]["kernel"] + v[:, None], "bias": q["head"]["bias"] + 0.3}
    return q


X = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, D)))
EXPECTED = {"norm_scale.layernorm": 3, "head_rotation.norope": 1, "relu_rescale.anchor": 1, "ce_shift.W": 1,
            "ce_shift.b": 1}


def _loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()


def test_detected_from_the_jaxpr_and_checked():
    binding = gj.bind(_params(), apply=apply, example=(X,), loss="cross_entropy")
    keys = {}
    for f in binding.families:
        keys[f.family.key] = keys.get(f.family.key, 0) + 1
    assert keys == EXPECTED, str(binding)
    assert all(binding.layout.transpose[binding.paths.index(w)] for w in ("attn.wq", "mlp.w1", "head.kernel"))
    assert binding.checked.startswith("float64")
    p, y = _params(), jnp.asarray([[0, 1, 2], [3, 4, 0]])
    assert abs(float(_loss(p, X, y) - _loss(transform(p), X, y))) < 1e-12  # the oracle is a gauge


def protocol(tx, params, g, loss, batch, steps=6):
    """ddc.md's protocol with a hand-written ``g``: run A from ``params``, run B from ``g(params)``, each on its
    own gradients of ``loss(p, *batch(t))``; the max over steps of ``‖θ_B − g(θ_A)‖ / ‖g(θ_A)‖``."""
    pa, pb = params, g(params)
    sa, sb = tx.init(pa), tx.init(pb)
    update, grad = jax.jit(tx.update), jax.jit(jax.grad(loss))  # (traced once: the runs' shapes are equal)
    worst = 0.0
    for t in range(steps):
        xs = batch(t)
        ua, sa = update(grad(pa, *xs), sa, pa)
        ub, sb = update(grad(pb, *xs), sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
        image = jax.tree_util.tree_leaves(g(pa))
        num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree_util.tree_leaves(pb), image))
        worst = max(worst, (num / sum(float(jnp.sum(b ** 2)) for b in image)) ** 0.5)
    return worst


def _batch(t):
    rng = np.random.default_rng(10 + t)
    return jnp.asarray(rng.normal(size=(2, 3, D))), jnp.asarray(rng.integers(0, V, (2, 3)))


def _protocol(tx):
    return protocol(tx, _params(), transform, _loss, _batch)


def test_ddc_adam_is_equivariant_under_the_hand_written_gauge():
    binding = gj.bind(_params(), apply=apply, example=(X,), loss="cross_entropy")
    assert _protocol(gj.ddc_adam(1e-2, weight_decay=0.1, gauges=binding)) < 1e-12
    assert _protocol(optax.adamw(1e-2, weight_decay=0.1)) > 1e-6


def test_wrong_explicit_spec_is_refused_and_without_the_loss_no_shift():
    wrong = [gj.GaugeSpec("relu_rescale.anchor", {"W_in": gj.TensorView("mlp.w1", transpose=True), "b_in": "mlp.b1",
                                                  "W_out": gj.TensorView("attn.wo", transpose=True)})]
    with pytest.raises(GaugeError, match="not a symmetry of this model|roles disagree"):
        gj.bind(_params(), wrong, apply=apply, example=(X,))
    plain = gj.bind(_params(), apply=apply, example=(X,))  # the logits themselves must stay: no shift
    assert not any(f.family.gauge == "ce_shift" for f in plain.families)
    assert any(r.gauge == "ce_shift" and "softmax" in r.reason for r in plain.refusals)


@pytest.mark.slow  # 34 s on the 2-core CI box; the hand-written-gauge test above covers JAX binding by default
def test_equinox_mlp_binds_and_ddc_adam_is_equivariant():
    """equinox's ``nn.MLP`` (``weight @ x + bias`` per example, batched by ``vmap``: the weight is the
    *left* operand of a ``dot_general``), a model library nobody here wrote."""
    import equinox as eqx  # in the jax extra
    mlp = eqx.nn.MLP(4, 3, 8, 2, activation=jax.nn.relu, key=jax.random.key(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)

    def run(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4)))
    per_family = gj.bind(params, apply=run, example=(x,), loss="cross_entropy", frames="per_family")
    assert [f.family.key for f in per_family.families] == ["relu_rescale.balance", "ce_shift.W", "ce_shift.b"]
    assert any("layers.1.weight is also acted on" in r.reason for r in per_family.refusals)  # 2nd unit overlaps
    # the jointly balanced frame binds every gauge: both hidden layers' unit rescales (coupled through
    # layers.1.weight: rows by the 2nd, columns by the 1st) and, on the output layer, the 2nd rescale
    # with the logit shift
    binding = gj.bind(params, apply=run, example=(x,), loss="cross_entropy")
    assert [f.family.gauge for f in binding.families] == ["relu_rescale", "relu_rescale", "ce_shift", "ce_shift"]
    assert not binding.refusals

    rng = np.random.default_rng(4)
    s, r = (jnp.exp(jnp.asarray(rng.uniform(-1, 1, 8))) for _ in range(2))
    v = jnp.asarray(rng.normal(size=8))

    def g(p):  # by hand: unit k of layer 0 (row k, bias k) × s_k, column k of layer 1 / s_k; the same with r
        lay = list(p.layers)  # for layer 1's units against layer 2's columns; the logits shift
        w0, b0, w1, b1, w2, b2 = (lay[0].weight, lay[0].bias, lay[1].weight, lay[1].bias, lay[2].weight,
                                  lay[2].bias)
        q = eqx.tree_at(lambda t: (t.layers[0].weight, t.layers[0].bias, t.layers[1].weight, t.layers[1].bias,
                                   t.layers[2].weight, t.layers[2].bias), p,
                        (w0 * s[:, None], b0 * s, w1 * r[:, None] / s[None, :], b1 * r,
                         w2 / r[None, :] + v[None, :], b2 + 0.4))
        return q

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(run(p, x), y).mean()

    def batch(t):
        r = np.random.default_rng(20 + t)
        return jnp.asarray(r.normal(size=(6, 4))), jnp.asarray(r.integers(0, 3, 6))

    assert abs(float(loss(params, x, jnp.zeros(6, int)) - loss(g(params), x, jnp.zeros(6, int)))) < 1e-12
    assert protocol(gj.ddc_adam(1e-2, weight_decay=0.1, gauges=binding), params, g, loss, batch) < 1e-12
    assert protocol(optax.adamw(1e-2, weight_decay=0.1), params, g, loss, batch) > 1e-6


def test_a_rank_deficient_head_is_named_when_the_frame_check_fails():
    """A head that has lost a direction (its query and key columns projected off ``n``: the rank collapse of seed
    002 Thm 2, hand-written on the ``(in, out)`` kernels): the composite frame check cannot pass there, and the
    refusal names the head family and the unit, not whichever family is last; the rest is bound."""
    p = _params()
    n = np.zeros(DH)
    n[:2] = (0.6, 0.8)
    proj = jnp.asarray(np.eye(DH) - np.outer(n, n))
    cols = slice(DH, 2 * DH)  # head 1
    for w in ("wq", "wk"):
        p["attn"] = dict(p["attn"], **{w: p["attn"][w].at[:, cols].set(p["attn"][w][:, cols] @ proj)})
    binding = gj.bind(p, apply=apply, example=(X,), loss="cross_entropy")
    assert not any(f.family.gauge == "head_rotation" for f in binding.families)
    assert len(binding.families) == 6  # the three gains, the ReLU unit, the two shifts
    (refusal,) = [r for r in binding.refusals if r.gauge == "head_rotation"]
    assert refusal.where == "attn" and "units [1] are degenerate" in refusal.reason
