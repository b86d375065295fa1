"""Trace a JAX function of a parameter pytree into a :class:`~gaugemath.structure.graph.Graph`.

``jax.make_jaxpr`` records ``target(apply(params, *example))``; the parameters enter as named
inputs (leaf paths joined by ``.``, as the JAX binder names them). The jaxpr's primitives are put in
the detector's vocabulary, so one detector serves torch and JAX:

* named ``jit`` calls that are activations or normalisations (``relu``, ``gelu``, ``silu``,
  ``log_softmax``, ``softmax``, …: ``jax.nn`` wraps each in a named ``jit``) stay one operation;
  every other call (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``) is inlined;
* ``dot_general`` with a parameter matrix and no batch axes is ``linear`` (weight ``(out, in)``,
  contracted on its axis 1) or ``matmul`` (weight ``(in, out)``: a flax kernel); between two
  activations it stays ``dot_general`` (attention scores, read by the rotation analysis);
* ``broadcast_in_dim`` of a 1-D parameter onto the last axis is the parameter itself (torch's
  implicit broadcasting); ``max(x, 0)`` is ``relu``; ``convert_element_type`` and ``stop_gradient``
  are casts; ``reduce_sum`` is ``sum``; ``integer_pow`` is ``pow``; ``logistic`` is ``sigmoid``.

Data-movement primitives (reshape, transpose, slices, concatenate, …) run on the detector's tag
arrays through ``primitive.bind``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.extend.core import Literal

from .graph import Graph, Node

#: named calls kept as one operation (their jaxpr is not inlined)
NAMED = {"relu": "relu", "leaky_relu": "leaky_relu", "gelu": "gelu", "silu": "silu", "swish": "silu",
         "sigmoid": "sigmoid", "tanh": "tanh", "softplus": "softplus", "elu": "elu", "log_softmax": "log_softmax",
         "softmax": "softmax", "_softmax": "softmax", "_log_softmax": "log_softmax"}
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
         "remat", "checkpoint")
RENAME = {"convert_element_type": "_to_copy", "stop_gradient": "_to_copy", "reduce_sum": "sum",
          "integer_pow": "pow", "logistic": "sigmoid", "concatenate": "cat", "expand_dims": "unsqueeze",
          "copy": "clone", "copy_p": "clone"}
MOVES = {"reshape", "transpose", "squeeze", "broadcast_in_dim", "slice", "rev", "split", "unsqueeze", "cat",
         "clone"}


def _path_key(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def trace(apply: Callable, params, example: Sequence, target: Callable | None = None) -> Graph:
    """The graph of ``target(apply(params, *example))`` with the parameter leaves as named inputs."""
    target = target or (lambda out: out)
    closed = jax.make_jaxpr(lambda p, *a: target(apply(p, *a)))(params, *example)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [".".join(_path_key(k) for k in path) for path, _ in flat]
    nodes: list[Node] = []
    env: dict = {}

    def add(node: Node) -> Node:
        node.index = len(nodes)
        for inp in node.inputs():
            if not inp.users or inp.users[-1] is not node:
                inp.users.append(node)
        nodes.append(node)
        return node

    def read(v):
        if isinstance(v, Literal):
            return v.val.item() if hasattr(v.val, "item") else v.val
        return env[v]

    jaxpr = closed.jaxpr
    for k, var in enumerate(jaxpr.invars):
        kind, name = ("param", names[k]) if k < len(names) else ("input", f"input{k - len(names)}")
        env[var] = add(Node(0, kind, shape=tuple(var.aval.shape), name=name))
    for var, const in zip(jaxpr.constvars, closed.consts):
        env[var] = add(Node(0, "input", shape=tuple(np.shape(const)), name="const"))
    _walk(jaxpr, env, read, add)
    outputs = [env[v] for v in jaxpr.outvars if not isinstance(v, Literal)]
    return Graph(nodes, {n.name: n for n in nodes if n.kind == "param"}, outputs, _run)


def _walk(jaxpr, env: dict, read: Callable, add: Callable) -> None:
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        args = [read(v) for v in eqn.invars]
        name = eqn.params.get("name")
        if prim in CALLS and name in NAMED:
            env[eqn.outvars[0]] = add(_named(NAMED[name], eqn, args))
            continue
        if prim in CALLS:
            sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
            inner = getattr(sub, "jaxpr", sub)
            consts = list(getattr(sub, "consts", []))
            sub_env = dict(zip(inner.invars, args))
            for var, const in zip(inner.constvars, consts):
                sub_env[var] = add(Node(0, "input", shape=tuple(np.shape(const)), name="const"))
            _walk(inner, sub_env, lambda v, e=sub_env: (v.val.item() if hasattr(v.val, "item") else v.val)
                  if isinstance(v, Literal) else e[v], add)
            for outer, var in zip(eqn.outvars, inner.outvars):
                env[outer] = sub_env[var] if not isinstance(var, Literal) else var.val
            continue
        if prim == "broadcast_in_dim" and isinstance(args[0], Node) and args[0].kind == "param" \
                and len(args[0].shape) == 1 and tuple(eqn.params["broadcast_dimensions"]) == \
                (len(eqn.params["shape"]) - 1,):
            env[eqn.outvars[0]] = args[0]  # a bias or gain broadcast over the leading axes
            continue
        if prim == "dot_general" and _param_lhs(eqn, args):  # W @ x (equinox's Linear, under vmap)
            env[eqn.outvars[0]] = _lhs_linear(eqn, args, add)
            continue
        node = _op(prim, eqn, args)
        out = add(node)
        if len(eqn.outvars) == 1:
            env[eqn.outvars[0]] = out
        else:
            for k, var in enumerate(eqn.outvars):
                item = Node(0, "op", op="getitem", args=(out, k), shape=tuple(var.aval.shape))
                item.prim = None  # type: ignore[attr-defined]
                env[var] = add(item)


def _param_lhs(eqn, args) -> bool:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    w, x = args
    return (isinstance(w, Node) and w.kind == "param" and w.shape is not None and len(w.shape) == 2
            and isinstance(x, Node) and not lb and not rb and len(lc) == 1 and tuple(rc) == (len(x.shape) - 1,))


def _lhs_linear(eqn, args, add) -> Node:
    """``dot_general(W, x)`` contracting ``x``'s last axis: the linear layer ``x Wᵀ`` (channel last), then
    the transpose that puts the channel first, as ``W @ x`` does."""
    (lc, _), _ = eqn.params["dimension_numbers"]
    w, x = args
    op = "linear" if lc[0] == 1 else "matmul"
    free = tuple(x.shape[:-1])
    out_dim = w.shape[0] if op == "linear" else w.shape[1]
    lin = Node(0, "op", op=op, args=(x, w), shape=free + (out_dim,))
    lin.prim = None  # type: ignore[attr-defined]
    add(lin)
    perm = (len(free),) + tuple(range(len(free)))
    t = Node(0, "op", op="transpose", args=(lin,), shape=tuple(eqn.outvars[0].aval.shape))
    t.prim = jax.lax.transpose_p  # type: ignore[attr-defined]
    t.params = {"permutation": perm}  # type: ignore[attr-defined]
    return add(t)


def _named(op: str, eqn, args) -> Node:
    shape = tuple(eqn.outvars[0].aval.shape)
    if op in ("log_softmax", "softmax"):  # the axis: that of the inner reductions
        inner = eqn.params["jaxpr"].jaxpr
        axes = next((e.params["axes"] for e in inner.eqns if e.primitive.name in ("reduce_max", "reduce_sum")), (-1,))
        node = Node(0, "op", op=op, args=(args[0], int(axes[0])), shape=shape)
    else:
        node = Node(0, "op", op=op, args=tuple(args), shape=shape)
    node.prim = None  # type: ignore[attr-defined]
    return node


def _op(prim: str, eqn, args) -> Node:
    shape = tuple(eqn.outvars[0].aval.shape) if len(eqn.outvars) == 1 else None
    params = dict(eqn.params)
    op = RENAME.get(prim, prim)
    if prim == "dot_general":
        (lc, rc), (lb, rb) = params["dimension_numbers"]
        x, w = args
        if isinstance(w, Node) and w.kind == "param" and len(w.shape) == 2 and not lb and not rb \
                and tuple(lc) == (len(x.shape) - 1,) and len(rc) == 1:
            op = "matmul" if rc[0] == 0 else "linear"
            node = Node(0, "op", op=op, args=(x, w), shape=shape)
            node.prim = None  # type: ignore[attr-defined]
            return node
    if prim == "max" and any(isinstance(a, (int, float)) and a == 0 for a in args):
        op, args = "relu", [a for a in args if isinstance(a, Node)]
    if prim == "integer_pow":
        args = [args[0], params["y"]]
    if prim == "reduce_sum":
        args = [args[0], list(params["axes"]), False]
    node = Node(0, "op", op=op, args=tuple(args), kwargs={}, shape=shape)
    node.prim = eqn.primitive  # type: ignore[attr-defined]
    node.params = params  # type: ignore[attr-defined]
    return node


def _run(node: Node, args: tuple, kwargs: dict):
    """Execute ``node``'s primitive on tag arrays (torch in, torch out)."""
    if node.op == "getitem":
        return args[0][args[1]]
    prim = getattr(node, "prim", None)
    if prim is None:
        raise TypeError(f"{node.op} is not a data-movement primitive")

    def to_jax(a):
        if isinstance(a, torch.Tensor):
            return jnp.asarray(a.numpy())
        if isinstance(a, (list, tuple)):
            return type(a)(to_jax(x) for x in a)
        return a

    def to_torch(a):
        if isinstance(a, (list, tuple)):
            return type(a)(to_torch(x) for x in a)
        return torch.from_numpy(np.asarray(a).astype(np.int64))

    flat_args = []
    for a in args:
        if isinstance(a, (list, tuple)) and node.op == "cat":
            flat_args += list(a)
        else:
            flat_args.append(a)
    out = prim.bind(*[to_jax(a) for a in flat_args], **node.params)  # type: ignore[attr-defined]
    return to_torch(out)
