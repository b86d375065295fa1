"""Find the orbit families of a traced computation by propagating tags through it.

Every analysis here asks one question of the graph — *if this group acted on these parameter
slices, would the outputs stay the same?* — and answers it by following the acted-on entries
forward. A *tag* array, shaped like an intermediate value, says for each entry which parameter
row (or channel) it comes from; data-movement operations (views, transposes, slices, splits,
concatenations) are executed on the tags by the frontend, so a layout is followed exactly as the
model lays it out, and every other operation has an explicit rule. An operation without a rule
ends the analysis there and, where the family was otherwise plausible, the refusal names it:
the detector never guesses.

Three analyses:

* **channel rescale** (:func:`_rescale`): scaling channel ``k`` of a producer — rows of a linear
  weight and its bias, or a 1-D gain and bias — by ``α_k`` scales channel ``k`` of its output. The
  scale passes through positively homogeneous activations (``relu``, ``leaky_relu``: degree 1;
  ``pow(·, p)``: degree ``p``), products with unscaled values (gates), dropout and casts, and must
  end, with degree 1, in the input columns of linear consumers (``W[:, k] / α_k``). Anything else
  — a residual ``add``, a non-homogeneous activation, a norm, the output — breaks it.
  A linear producer gives the unit rescale (``relu_rescale`` with a bias, ``swiglu_rescale``
  without), a 1-D gain the norm gain rescale (``norm_scale``).
* **logit shift** (:func:`_shift`): adding ``1vᵀ`` to a head weight (and ``c1`` to its bias) adds a
  constant along the class axis; it must reach a ``log_softmax``/``softmax``/``cross_entropy``
  over that axis through casts and scalar scalings only.
* **head rotation** (:func:`_rotations`): one joint pass tags every row of every linear output;
  ``add`` may join two rows per entry (that is how RoPE's ``q·cos + rotate_half(q)·sin`` and the
  interleaved form show their planes), products with untagged values (cos, sin, scales) pass. At
  each attention score (``scaled_dot_product_attention``, ``q @ kᵀ``) the tags say which rows of
  which weights form each query and key head, which key head each query head reads (grouped-query
  attention) and the plane pairing of RoPE. Whether a rotation really commutes with what was
  passed (RoPE's cos/sin, a QK-norm gain) is not decided here but by the binder's check on the
  model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gaugemath.backends._spec import TensorView

from .graph import Graph, Node

#: operations that only move data: executed on the tag arrays as the model executes them
MOVES = frozenset({
    "view", "reshape", "_unsafe_view", "transpose", "permute", "t", "unsqueeze", "squeeze", "expand", "expand_as",
    "contiguous", "clone", "alias", "detach", "detach_", "slice", "select", "split", "split_with_sizes", "chunk",
    "unbind", "getitem", "unflatten", "flatten", "narrow", "movedim", "repeat_interleave", "repeat", "cat", "stack",
    "lift_fresh_copy", "_reshape_alias", "as_strided", "broadcast_in_dim", "rev",
})
#: value-preserving casts: the tag passes unchanged (running them would cast the tags)
CASTS = frozenset({"to", "_to_copy", "type_as", "_to_dtype", "to_dtype", "to_dtype_layout"})
#: positively homogeneous activations of degree 1
HOMOGENEOUS = frozenset({"relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "_prelu_kernel"})
#: elementwise nonlinearities that are not homogeneous (named in refusals)
NONLINEAR = frozenset({"gelu", "silu", "tanh", "sigmoid", "exp", "softplus", "elu", "selu", "mish", "hardswish",
                       "hardtanh", "relu6", "erf", "log", "sqrt", "rsqrt", "abs", "sin", "cos"})
LINEAR_OPS = frozenset({"linear", "addmm", "matmul", "mm"})
SOFTMAX = frozenset({"log_softmax", "_log_softmax", "softmax", "_softmax", "special_log_softmax"})


@dataclass
class Proposal:
    """A family the graph supports: ``kind`` is a family key or its stem (``"unit_rescale"`` is
    decided into ``relu_rescale``/``swiglu_rescale`` by the producer's bias, ``"ce_shift"`` names both
    shift families), ``roles`` maps roles to views, ``at`` is the graph position of its producer."""

    kind: str
    roles: dict[str, list[TensorView]]
    name: str
    at: int
    d_head: int = 0
    via: str = ""


@dataclass(frozen=True)
class Refusal:
    """A family that was looked for and is not bound: ``gauge``, the parameters, and why."""

    gauge: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.gauge} refused on {self.where}: {self.reason}"


@dataclass
class Detection:
    proposals: list[Proposal] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)


class _Fail(Exception):
    def __init__(self, node: Node, reason: str):
        self.node, self.reason = node, reason
        super().__init__(reason)


# --------------------------------------------------------------------------- helpers
def _param(node) -> str | None:
    return node.name if isinstance(node, Node) and node.kind == "param" else None


def _tagged_args(node: Node, tags: dict) -> list[Node]:
    return [a for a in node.inputs() if a in tags]


def _substitute(values, tags: dict, pick: Callable):
    if isinstance(values, Node):
        return pick(tags[values]) if values in tags else values
    if isinstance(values, (list, tuple)):
        return type(values)(_substitute(v, tags, pick) for v in values)
    return values


def _move(graph: Graph, node: Node, tags: dict, pick: Callable):
    """Run a data-movement node on tags (``pick`` selects one tag array from a tag value)."""
    for a in node.inputs():
        if a not in tags and (a.shape is None or math.prod(a.shape) != 0):
            raise _Fail(node, f"{node.op} mixes the traced entries with other values")
    args = tuple(_substitute(a, tags, pick) for a in node.args)
    kwargs = {k: _substitute(v, tags, pick) for k, v in node.kwargs.items()}
    # an empty untagged operand (an empty KV cache) is concatenated as an empty tag array
    args = tuple(_empty_tags(a) for a in args)
    return graph.run(node, args, kwargs)


def _empty_tags(a):
    if isinstance(a, Node):
        return torch.empty(a.shape, dtype=torch.long)
    if isinstance(a, (list, tuple)):
        return type(a)(_empty_tags(x) for x in a)
    return a


def _sole_use(graph: Graph, name: str | None, at: Node) -> str | None:
    """``None`` if parameter ``name`` is read only by ``at``; else what else reads it."""
    if name is None:
        return None
    others = [u for u in graph.params[name].users if u is not at]
    if others:
        alias = graph.aliases.get(name)
        also = f" (also read by {others[0].op})"
        return (f"{name} is tied to {', '.join(alias)}{also}" if alias else f"{name} is read by {len(others) + 1} "
                f"operations{also}: a shared weight")
    return None


def _last_axis_map(tag: torch.Tensor) -> torch.Tensor | None:
    """The per-column tag of the last axis if it is the same for every leading index, else ``None``."""
    flat = tag.reshape(-1, tag.shape[-1])
    return flat[0] if bool((flat == flat[0]).all()) else None


def _module(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for tokens in zip(*parts):
        if len(set(tokens)) != 1:
            break
        common.append(tokens[0])
    if common:
        return ".".join(common)
    mods = list(dict.fromkeys(n.rsplit(".", 1)[0] if "." in n else n for n in names))
    return "→".join([mods[0], mods[-1]] if len(mods) > 1 else mods)


# --------------------------------------------------------------------------- producers
@dataclass
class _Producer:
    node: Node           # the value whose channels are scaled (after the bias, if any)
    weight: str          # producing parameter (2-D weight or 1-D gain)
    bias: str | None
    transpose: bool      # weight stored (in, out)
    gain: bool           # a 1-D gain (norm_scale) rather than a linear weight
    reads: list[Node]    # the operations reading the producer's parameters


def _linear_producer(graph: Graph, node: Node) -> _Producer | None:
    """``linear(x, W, b)`` / ``addmm(b, x, W)`` / ``matmul(x, W) (+ b)`` with a parameter weight."""
    if node.op == "linear" and _param(node.args[1]) and node.args[1].shape and len(node.args[1].shape) == 2:
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if b is not None and not _param(b):
            return None
        if b is None:  # a bias added after data movement (W @ x + b under vmap: transposed there and back)
            out = _bias_after(node)
            if out is not None:
                return _Producer(out[0], node.args[1].name, out[1], False, False, [node, out[0]])
        return _Producer(node, node.args[1].name, _param(b), False, False, [node])
    if node.op == "addmm" and _param(node.args[2]) and _param(node.args[0]) and len(node.args[0].shape) == 1:
        return _Producer(node, node.args[2].name, node.args[0].name, True, False, [node])
    if node.op in ("matmul", "mm") and _param(node.args[1]) and len(node.args[1].shape) == 2 \
            and not _param(node.args[0]):
        out, bias, reads = node, None, [node]
        if len(node.users) == 1 and node.users[0].op == "add":
            add = node.users[0]
            other = add.args[1] if add.args[0] is node else add.args[0]
            if _param(other) and other.shape is not None and len(other.shape) == 1:
                out, bias, reads = add, other.name, [node, add]
        return _Producer(out, node.args[1].name, bias, True, False, reads)
    return None


def _bias_after(node: Node) -> tuple[Node, str] | None:
    """``(add, bias)`` if ``node``'s value reaches ``add(·, b)`` with a 1-D parameter ``b`` through
    transposes only and arrives with the channel back on the last axis."""
    cur = node
    while len(cur.users) == 1 and cur.users[0].op == "transpose":
        cur = cur.users[0]
    if cur is node or len(cur.users) != 1 or cur.users[0].op != "add" or cur.shape != node.shape:
        return None
    add = cur.users[0]
    other = add.args[1] if add.args[0] is cur else add.args[0]
    if _param(other) and other.shape is not None and len(other.shape) == 1 and other.shape[0] == node.shape[-1]:
        return add, other.name
    return None


def _gain_producer(graph: Graph, node: Node) -> _Producer | None:
    """A 1-D gain: ``layer_norm``/``rms_norm`` weight (and bias), or ``γ ⊙ z`` (``+ β``)."""
    if node.op in ("layer_norm", "rms_norm") and len(node.args) > 2 and _param(node.args[2]):
        shape = node.args[1]
        if len(shape) != 1:
            return None
        bias = node.args[3] if node.op == "layer_norm" and len(node.args) > 3 else None
        return _Producer(node, node.args[2].name, _param(bias), False, True, [node])
    if node.op == "mul" and len(node.args) == 2 and node.shape:
        for g, z in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if _param(g) and g.shape is not None and len(g.shape) == 1 and g.shape[0] == node.shape[-1] \
                    and isinstance(z, Node) and not _param(z):
                out, bias, reads = node, None, [node]
                if len(node.users) == 1 and node.users[0].op == "add":
                    add = node.users[0]
                    other = add.args[1] if add.args[0] is node else add.args[0]
                    if _param(other) and other.shape == g.shape:
                        out, bias, reads = add, other.name, [node, add]
                return _Producer(out, g.name, bias, False, True, reads)
    return None


# --------------------------------------------------------------------------- channel rescale
@dataclass
class _Sink:
    param: str
    transpose: bool


def _rescale(graph: Graph, prod: _Producer) -> list[_Sink]:
    """Follow ``α_k`` on channel ``k`` of ``prod.node`` to the consumers that absorb it (raises _Fail)."""
    src = prod.node
    n = src.shape[-1]
    tags: dict[Node, tuple[torch.Tensor, int]] = {src: (torch.arange(n).expand(src.shape), 1)}
    sinks: list[_Sink] = []
    for node in graph.nodes[src.index + 1:]:
        tagged = _tagged_args(node, tags)
        if not tagged:
            continue
        op = node.op
        tag, deg = tags[tagged[0]]
        if op in MOVES:
            tags[node] = (_move(graph, node, tags, lambda t: t[0]), deg)
        elif op in CASTS or op == "dropout" or op == "neg":
            tags[node] = (tag, deg)
        elif op in HOMOGENEOUS:
            if node.args[0] is not tagged[0] or len(tagged) > 1:
                raise _Fail(node, f"{op} reads the rescaled channel as a parameter")
            tags[node] = (tag, deg)
        elif op in ("pow", "square"):
            p = 2 if op == "square" else node.args[1]
            if not (isinstance(p, (int, float)) and float(p).is_integer() and p > 0):
                raise _Fail(node, f"pow with exponent {p!r} is not homogeneous")
            tags[node] = (tag, deg * int(p))
        elif op in ("mul", "div"):
            if len(tagged) == 2 and op == "mul":
                t0, t1 = (torch.broadcast_to(tags[a][0], node.shape) for a in tagged)
                if not torch.equal(t0, t1):
                    raise _Fail(node, "mul of two differently rescaled values")
                tags[node] = (t0, tags[tagged[0]][1] + tags[tagged[1]][1])
            elif op == "div" and node.args[0] is not tagged[0]:
                raise _Fail(node, "div by the rescaled channel")
            else:
                tags[node] = (torch.broadcast_to(tag, node.shape), deg)
        elif op in ("add", "sub"):
            if len(tagged) == 2 and torch.equal(*(torch.broadcast_to(tags[a][0], node.shape) for a in tagged)) \
                    and tags[tagged[0]][1] == tags[tagged[1]][1]:
                tags[node] = (torch.broadcast_to(tag, node.shape), deg)
            else:
                raise _Fail(node, f"{op}: the rescaled channel meets an unscaled value (a residual branch or a "
                                  "bias)")
        elif op in ("sum", "mean") and len(node.args) > 1 and node.args[1] is not None:
            dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
            keep = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
            hi, lo = tag.amax(dim=list(dims), keepdim=keep), tag.amin(dim=list(dims), keepdim=keep)
            if not torch.equal(hi, lo):
                raise _Fail(node, f"{op} over the rescaled channels")
            tags[node] = (hi, deg)
        elif op in LINEAR_OPS:
            x, w, transpose = _linear_operands(node)
            if x is not tagged[0] or len(tagged) > 1 or _param(w) is None:
                raise _Fail(node, f"{op} reads the rescaled channel other than as a linear layer's input")
            cols = _last_axis_map(tag)
            if cols is None or not torch.equal(cols, torch.arange(n)):
                raise _Fail(node, f"{op}: the consumer's input columns are not the channels in order")
            if deg != 1:
                raise _Fail(node, f"the channel reaches {w.name} with degree {deg} (e.g. a squared ReLU); only "
                                  "degree-1 rescales have proved families")
            tie = _sole_use(graph, w.name, node)
            if tie:
                raise _Fail(node, tie)
            sinks.append(_Sink(w.name, transpose))
        else:
            raise _Fail(node, f"{op} is not positively homogeneous" if op in NONLINEAR else
                        f"the rescaled channel reaches {op}, which does not absorb the scale")
        if node in tags and graph.is_output(node):
            raise _Fail(node, "the rescaled channel reaches the output")
    if graph.is_output(src):
        raise _Fail(src, "the rescaled channel reaches the output")
    if not sinks:
        raise _Fail(src, "no consumer absorbs the rescale")
    return sinks


def _linear_operands(node: Node) -> tuple[Node, Node, bool]:
    """``(input, weight, weight stored (in, out))`` of a linear-like node."""
    if node.op == "linear":
        return node.args[0], node.args[1], False
    if node.op == "addmm":
        return node.args[1], node.args[2], True
    return node.args[0], node.args[1], True


def _unit_proposal(graph: Graph, prod: _Producer, sinks: list[_Sink]) -> Proposal:
    consumers = [TensorView(s.param, s.transpose) for s in sinks]
    if prod.gain:
        roles = {"gain": [TensorView(prod.weight)], "W": consumers}
        if prod.bias:
            roles["bias"] = [TensorView(prod.bias)]
        kind = "norm_scale.layernorm" if prod.bias else "norm_scale.rmsnorm"
        return Proposal(kind, roles, prod.weight.rsplit(".", 1)[0], prod.node.index)
    roles = {"W_in": [TensorView(prod.weight, prod.transpose)], "W_out": consumers}
    if prod.bias:
        roles["b_in"] = [TensorView(prod.bias)]
    return Proposal("unit_rescale", roles, _module([prod.weight] + [s.param for s in sinks]), prod.node.index)


# --------------------------------------------------------------------------- logit shift
def _class_axis(tag: torch.Tensor, n: int) -> int | None:
    for axis, size in enumerate(tag.shape):
        if size == n:
            shape = [1] * tag.dim()
            shape[axis] = n
            if torch.equal(tag, torch.arange(n).reshape(shape).expand(tag.shape)):
                return axis
    return None


def _shift(graph: Graph, prod: _Producer) -> None:
    """Follow a constant shift along the class axis of ``prod.node`` to a softmax (raises _Fail)."""
    src = prod.node
    n = src.shape[-1]
    tags = {src: torch.arange(n).expand(src.shape)}
    absorbed = False
    for node in graph.nodes[src.index + 1:]:
        tagged = _tagged_args(node, tags)
        if not tagged:
            continue
        op, tag = node.op, tags[tagged[0]]
        if op in MOVES:
            tags[node] = _move(graph, node, tags, lambda t: t)
        elif op in CASTS:
            tags[node] = tag
        elif op in ("mul", "div") and len(node.inputs()) == 1 and node.args[0] is tagged[0]:
            tags[node] = tag  # a scalar temperature scales the shift
        elif op in SOFTMAX or op == "cross_entropy_loss":
            axis = _class_axis(tag, n)
            dim = (1 if tag.dim() >= 2 else 0) if op == "cross_entropy_loss" else \
                node.args[1] % tag.dim()
            if node.args[0] is not tagged[0] or axis is None or axis != dim:
                raise _Fail(node, f"{op} is not taken over the class axis")
            absorbed = True
        else:
            raise _Fail(node, f"the shifted logits reach {op}")
        if node in tags and graph.is_output(node):
            raise _Fail(node, "the logits reach the output without a softmax (pass loss='cross_entropy' if the "
                              "model is trained with softmax cross-entropy)")
    if graph.is_output(src):
        raise _Fail(src, "the logits reach the output without a softmax (pass loss='cross_entropy' if the model "
                         "is trained with softmax cross-entropy)")
    if not absorbed:
        raise _Fail(src, "the logits reach no softmax")


# --------------------------------------------------------------------------- rotations
@dataclass
class _Rows:
    """Joint row tags: global row ids ``a``, ``b`` (equal unless RoPE joined two rows)."""

    a: torch.Tensor
    b: torch.Tensor


def _rotations(graph: Graph, producers: list[_Producer]) -> tuple[list[Proposal], list[Refusal]]:
    offsets, owner = {}, []
    start = 0
    for p in producers:
        offsets[p.node] = start
        owner += [p] * p.node.shape[-1]
        start += p.node.shape[-1]
    tags: dict[Node, _Rows] = {}
    failed: set[int] = set()
    sinks: list[tuple[Node, _Rows, _Rows, bool]] = []

    def fail(node: Node, rows: list[_Rows]) -> None:
        for r in rows:
            failed.update(torch.unique(torch.cat([r.a.reshape(-1), r.b.reshape(-1)])).tolist())

    for node in graph.nodes:
        if node in offsets:
            t = torch.arange(node.shape[-1]).expand(node.shape) + offsets[node]
            tags[node] = _Rows(t, t)
            continue
        tagged = _tagged_args(node, tags)
        if not tagged:
            continue
        op = node.op
        rows = [tags[a] for a in tagged]
        try:
            if op in MOVES:
                a = _move(graph, node, tags, lambda r: r.a)
                b = _move(graph, node, tags, lambda r: r.b)
                tags[node] = _Rows(a, b)  # for split/unbind: tuples, read by getitem
            elif op in CASTS or op == "neg":
                tags[node] = rows[0]
            elif op in ("mul", "div") and len(tagged) == 1 and node.args[0] is tagged[0] or \
                    (op == "mul" and len(tagged) == 1):
                tags[node] = _Rows(torch.broadcast_to(rows[0].a, node.shape), torch.broadcast_to(rows[0].b, node.shape))
            elif op in ("add", "sub") and len(tagged) == 2:
                tags[node] = _join(rows[0], rows[1], node)
            elif op == "scaled_dot_product_attention":
                q, k = node.args[0], node.args[1]
                for a in tagged:
                    if a is not q and a is not k and a is not node.args[2]:
                        fail(node, [tags[a]])
                if q in tags and k in tags:
                    sinks.append((node, tags[q], tags[k], bool(node.kwargs.get("enable_gqa", False))))
                else:
                    fail(node, [tags[a] for a in (q, k) if a in tags])
                # the values (args[2]) are not rotated: no constraint on their rows
            elif op == "dot_general" and len(tagged) == 2:  # JAX: scores contracted on the features
                (lc, rc), (lb, rb) = node.params["dimension_numbers"]  # type: ignore[attr-defined]
                q, k = tags[node.args[0]], tags[node.args[1]]
                if len(lc) != 1 or len(rc) != 1:
                    raise _Fail(node, "dot_general contracts several axes")
                perm = [lambda t, b=b, c=c: list(b) + [d for d in range(t.dim()) if d not in (*b, *c)] + list(c)
                        for b, c in ((lb, lc), (rb, rc))]
                qp, kp = perm[0](q.a), perm[1](k.a)
                sinks.append((node, _Rows(q.a.permute(qp), q.b.permute(qp)), _Rows(k.a.permute(kp), k.b.permute(kp)),
                              False))
            elif op in ("matmul", "bmm", "baddbmm") and len(tagged) == 2:
                q, kt = (node.args[0], node.args[1]) if op != "baddbmm" else (node.args[1], node.args[2])
                if q in tags and kt in tags:
                    k = tags[kt]
                    sinks.append((node, tags[q], _Rows(k.a.transpose(-1, -2), k.b.transpose(-1, -2)), False))
                else:
                    fail(node, rows)
            else:
                fail(node, rows)
        except _Fail:
            fail(node, rows)
        if graph.is_output(node) and node in tags:
            fail(node, [tags[node]])
    proposals, refusals = [], []
    seen = set()
    for node, q, k, gqa in sinks:
        try:
            prop = _rotation_proposal(graph, node, q, k, gqa, owner, offsets, failed)
        except _Fail as e:
            refusals.append(Refusal("head_rotation", f"attention at %{node.index}", e.reason))
            continue
        key = tuple(sorted(str(v) for vs in prop.roles.values() for v in vs))
        if key not in seen:
            seen.add(key)
            proposals.append(prop)
    return proposals, refusals


def _join(x: _Rows, y: _Rows, node: Node) -> _Rows:
    """Entrywise union of two row sets of at most two rows each (RoPE's planes), else _Fail."""
    xa, xb, ya, yb = (torch.broadcast_to(t, node.shape) for t in (x.a, x.b, y.a, y.b))
    lo = torch.minimum(torch.minimum(xa, xb), torch.minimum(ya, yb))
    hi = torch.maximum(torch.maximum(xa, xb), torch.maximum(ya, yb))
    ok = ((xa == lo) | (xa == hi)) & ((xb == lo) | (xb == hi)) & ((ya == lo) | (ya == hi)) & ((yb == lo) | (yb == hi))
    if not bool(ok.all()):
        raise _Fail(node, "an add mixes more than two rows")
    return _Rows(lo, hi)


def _heads(r: _Rows, node: Node, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head (leading index) the rows ``(lo, hi)`` at each feature position: ``(N, E)`` each."""
    if r.a.dim() < 2:
        raise _Fail(node, f"{what} has no sequence axis")
    a, b = r.a, r.b
    if not (bool((a == a[..., :1, :]).all()) and bool((b == b[..., :1, :]).all())):
        raise _Fail(node, f"the rows of {what} differ between positions")
    return a[..., 0, :].reshape(-1, a.shape[-1]), b[..., 0, :].reshape(-1, b.shape[-1])


def _rotation_proposal(graph: Graph, node: Node, q: _Rows, k: _Rows, gqa: bool, owner, offsets, failed) -> Proposal:
    if gqa:
        rep = q.a.shape[-3] // k.a.shape[-3]
        k = _Rows(k.a.repeat_interleave(rep, dim=-3), k.b.repeat_interleave(rep, dim=-3))
    lead = torch.broadcast_shapes(q.a.shape[:-2], k.a.shape[:-2])
    q = _Rows(q.a.expand(*lead, *q.a.shape[-2:]), q.b.expand(*lead, *q.b.shape[-2:]))
    k = _Rows(k.a.expand(*lead, *k.a.shape[-2:]), k.b.expand(*lead, *k.b.shape[-2:]))
    qa, qb = _heads(q, node, "the queries")
    ka, kb = _heads(k, node, "the keys")
    used = set(torch.cat([qa, qb, ka, kb]).reshape(-1).tolist())
    if used & failed:
        raise _Fail(node, "query/key rows also feed other operations (a cache or output, a norm, a dropout)")
    pairs: dict[tuple, tuple] = {}
    for i in range(qa.shape[0]):
        qh = (tuple(qa[i].tolist()), tuple(qb[i].tolist()))
        kh = (tuple(ka[i].tolist()), tuple(kb[i].tolist()))
        if pairs.setdefault(qh, kh) != kh:
            raise _Fail(node, "a query head reads two different key heads")
    groups: dict[tuple, list[tuple]] = {}
    for qh, kh in pairs.items():
        groups.setdefault(kh, []).append(qh)
    sizes = {len(v) for v in groups.values()}
    if len(sizes) != 1:
        raise _Fail(node, "key heads are shared by unequal numbers of query heads")
    g = sizes.pop()
    first_k = next(iter(groups))
    e = len(first_k[0])
    rope = first_k[0] != first_k[1]
    if rope:
        planes = _planes(first_k, node)
    for kh, qhs in groups.items():
        for h in (kh, *qhs):
            if (h[0] != h[1]) != rope or (rope and _planes(h, node) != planes):
                raise _Fail(node, "heads disagree on their RoPE planes (partial RoPE is not supported)")

    def order(h) -> list[int]:  # global row ids of one head in the family's row order
        if not rope:
            return list(h[0])
        return [r for j, jj in planes for r in (min(h[0][j], h[1][j]), max(h[0][j], h[1][j]))]

    k_rows = [r for kh in groups for r in order(kh)]
    q_rows = [[r for kh, qhs in groups.items() for r in order(qhs[i])] for i in range(g)]
    roles: dict[str, list[TensorView]] = {}
    for role, lists in (("W_Q", q_rows), ("W_K", [k_rows])):
        weights, biases = [], []
        for rows in lists:
            prods = {id(owner[r]) for r in rows}
            if len(prods) != 1:
                raise _Fail(node, f"one {role[-1]} head takes rows from several projections")
            prod = owner[rows[0]]
            local = tuple(r - offsets[prod.node] for r in rows)
            for name in (prod.weight, prod.bias):
                tie = _sole_use(graph, name, prod.reads[0]) if name else None
                if tie and not (len(prod.reads) > 1 and all(u in prod.reads for u in graph.params[name].users)):
                    raise _Fail(node, tie)
            weights.append(TensorView(prod.weight, prod.transpose, _maybe_all(local, prod)))
            if prod.bias:
                biases.append(TensorView(prod.bias, False, _maybe_all(local, prod)))
        roles[role] = weights + biases
    names = [v.param for vs in roles.values() for v in vs]
    kind = "head_rotation.rope" if rope else "head_rotation.norope"
    via = f"{'RoPE planes' if rope else 'no RoPE'}, {len(groups)} key heads" + (f" × {g} query heads" if g > 1 else "")
    return Proposal(kind, roles, _module(names), node.index, d_head=0 if rope else e, via=via)


def _maybe_all(rows: tuple[int, ...], prod: _Producer) -> tuple[int, ...] | None:
    return None if rows == tuple(range(prod.node.shape[-1])) else rows


def _planes(h, node: Node) -> list[tuple[int, int]]:
    """Feature positions ``(j, j')`` that RoPE joins, in order of ``j``."""
    lo, hi = h[0], h[1]
    where = {}
    for j, (x, y) in enumerate(zip(lo, hi)):
        where.setdefault((min(x, y), max(x, y)), []).append(j)
    planes = []
    for key, js in where.items():
        if len(js) != 2 or key[0] == key[1]:
            raise _Fail(node, "RoPE does not pair the head's features into planes")
        planes.append((js[0], js[1]))
    return sorted(planes)


def _affine_gains(graph: Graph) -> list[Refusal]:
    """1-D parameters that scale a value as ``(c + w)`` (Gemma's RMSNorm): the rescale would act on
    ``w`` affinely (``w → α(c + w) − c``), which no catalogue family does; named, not bound."""
    out = []
    for name, node in graph.params.items():
        if node.shape is None or len(node.shape) != 1:
            continue
        cur = node
        while len(cur.users) == 1 and cur.users[0].op in CASTS:
            cur = cur.users[0]
        for add in cur.users:
            after = add
            while len(after.users) == 1 and after.users[0].op in CASTS:
                after = after.users[0]
            if add.op in ("add", "rsub") and len(add.inputs()) == 1 and any(u.op == "mul" for u in after.users):
                out.append(Refusal("norm_scale", name, "the gain enters as (c + w): its rescale acts on w affinely "
                                   "(w → α(c + w) − c), which no proved family does"))
                break
    return out


# --------------------------------------------------------------------------- entry point
def detect(graph: Graph) -> Detection:
    """Every family the graph supports, and every plausible one it does not, with the reason."""
    out = Detection()
    linear = [p for p in (_linear_producer(graph, n) for n in graph.nodes if n.kind == "op") if p]
    gains = [p for p in (_gain_producer(graph, n) for n in graph.nodes if n.kind == "op") if p]
    for prod in gains + linear:
        tie = next((t for name in (prod.weight, prod.bias) if name
                    for t in [_sole_use(graph, name, prod.reads[0])] if t
                    and not all(u in prod.reads for u in graph.params[name].users)), None)
        try:
            sinks = _rescale(graph, prod)
            if tie:
                raise _Fail(prod.node, tie)
            out.proposals.append(_unit_proposal(graph, prod, sinks))
        except _Fail as e:
            if prod.gain or e.node.op in NONLINEAR or "degree" in e.reason or "tied" in e.reason:
                gauge = "norm_scale" if prod.gain else "unit rescale"
                out.refusals.append(Refusal(gauge, prod.weight, f"{e.reason} (at %{e.node.index} {e.node.op})"))
        if not prod.gain:
            try:
                _shift(graph, prod)
                if tie:
                    raise _Fail(prod.node, tie)
                roles = {"W": [TensorView(prod.weight, prod.transpose)]}
                if prod.bias:
                    roles["b"] = [TensorView(prod.bias)]
                out.proposals.append(Proposal("ce_shift", roles, prod.weight.rsplit(".", 1)[0], prod.node.index))
            except _Fail as e:
                if "softmax" in e.reason or e.node.op in SOFTMAX or e.node.op == "cross_entropy_loss" or tie:
                    out.refusals.append(Refusal("ce_shift", prod.weight, e.reason))
    out.refusals += _affine_gains(graph)
    props, refs = _rotations(graph, linear)
    out.proposals += props
    out.refusals += refs
    out.proposals.sort(key=lambda p: p.at)
    return out
