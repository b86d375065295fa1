"""A symbolic :class:`~gaugemath.discovery.layer.Layer` from an ``nn.Module``: the binder's graph, op by op.

The module is traced by :func:`gaugemath.structure.torch_trace.trace` (the graph ``bind()`` reads:
ATen operations before decomposition, parameters as named inputs) and every node is evaluated on
SymPy expressions instead of numbers:

* a parameter of shape ``(r, c)`` (or ``(n,)``) is the block of symbols ``P[i, j]`` of that shape, named
  after the parameter (``fc1.weight`` → block ``fc1_weight``), in the layout the module stores it: the
  rows of a block are the rows of the tensor, so a family found on the block binds the tensor as it is;
* a floating example input is a block of input symbols (a symmetry must hold for all of them); an
  integer input (token ids) and every tensor the computation reads that is not a parameter (buffers,
  masks, RoPE tables) keep their traced values;
* an operation none of whose operands depends on a symbol runs as the model runs it (``torch``);
* a data-movement operation (:data:`gaugemath.structure.detect.MOVES`: views, transposes, slices, ``cat``,
  ``embedding``, ``pad``) runs on an integer array of positions into the symbolic entries — the model's own
  layout code is followed exactly, as the detector follows it with tags;
* every other operation has a translation in :data:`TRANSLATIONS` (linear maps, element-wise arithmetic,
  ``relu``/``gelu``/``silu``/``tanh``/``sigmoid``/``leaky_relu``, powers, ``layer_norm``, ``rms_norm``,
  softmax, attention, cross-entropy). An operation without one is refused by name.

Floating constants are exact: a value that is a small dyadic rational (``0.5``, ``2``) stays a number; any
other (``ε`` of a norm, ``1/√d``, RoPE's cosines) becomes a constant symbol with its value in
``Layer.constants`` (random search uses the value, proofs keep the symbol — a symmetry is proved for every
value of it, which is stronger). ``leaky_relu`` with slope ``a`` is declared positively homogeneous of degree 1
(``max(z, 0) + a·min(z, 0)``; recorded in ``Layer.assumptions``). Build the module at small widths: the
search is quadratic in the number of parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import sympy as sp
import torch
from torch import nn

from ..errors import GaugeError
from ..gauge import block_symbols
from ..structure.detect import CASTS, MOVES
from ..structure.graph import Node
from .functions import declare, relu
from .layer import Layer, layer

#: operations that move data (the detector's) and a few more that only select or pad entries
_MOVES = MOVES | {"embedding", "pad", "constant_pad_nd", "flip", "roll", "index_select", "gather", "take",
                  "diagonal", "tril", "triu", "index", "numpy_T", "mT", "swapaxes", "swapdims", "adjoint"}
_PASS = CASTS | {"dropout", "feature_dropout", "alpha_dropout", "detach", "clone", "contiguous", "alias",
                 "lift_fresh_copy", "_assert_tensor_metadata"}


def _symbolic(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == object


class _Consts:
    """Exact numbers for traced floats: small dyadic rationals as numbers, every other value one constant
    symbol per distinct value (``c0, c1, …``; values in :attr:`values`)."""

    def __init__(self, prefix: str = "c"):
        self.prefix, self.symbols, self.values = prefix, {}, {}

    def number(self, x) -> sp.Expr:
        if isinstance(x, (bool, np.bool_)):
            return sp.Integer(int(x))
        if isinstance(x, (int, np.integer)):
            return sp.Integer(int(x))
        x = float(x)
        if math.isinf(x):
            return sp.oo if x > 0 else -sp.oo
        if math.isnan(x):
            raise GaugeError("discover", None, "the traced computation reads a NaN constant")
        r = sp.Rational(x)
        if r.q <= 64 and abs(r.p) <= 1 << 20:
            return r
        if x not in self.symbols:
            s = sp.Symbol(f"{self.prefix}{len(self.symbols)}")
            self.symbols[x], self.values[s] = s, x
        return self.symbols[x]

    def array(self, t: torch.Tensor) -> np.ndarray:
        flat = t.detach().cpu().reshape(-1).tolist()
        out = np.empty(len(flat), dtype=object)
        out[:] = [self.number(x) for x in flat]
        return out.reshape(tuple(t.shape))


def _block_name(param: str) -> str:
    name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in param)
    return name if name[:1].isalpha() else "p_" + name


class _Evaluator:
    """Evaluates a traced :class:`~gaugemath.structure.graph.Graph` on SymPy entries (module docstring)."""

    def __init__(self, graph, layer_name: str, dtype: torch.dtype = torch.float32):
        self.graph, self.name, self.dtype = graph, layer_name, dtype
        self.consts = _Consts()
        self.values: dict[Node, Any] = {}
        self.assumptions: list[str] = []
        self.declared: dict[float, Callable] = {}

    # ------------------------------------------------------------------ operands
    def value(self, a):
        if isinstance(a, Node):
            return self.values[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(x) for x in a)
        return a

    def obj(self, v) -> np.ndarray:
        """An operand as an object array (tensors and Python numbers converted exactly)."""
        if _symbolic(v):
            return v
        if isinstance(v, torch.Tensor):
            return self.consts.array(v)
        if isinstance(v, (int, float, bool, np.number)):
            return np.array(self.consts.number(v), dtype=object)
        raise GaugeError(self.name, None, f"cannot use {type(v).__name__} as a tensor operand")

    def fail(self, node: Node, why: str) -> GaugeError:
        where = f" in {node.module}" if getattr(node, "module", "") else ""
        return GaugeError(self.name, None, f"operation {node.op} ({node!r}){where} {why}")

    # ------------------------------------------------------------------ evaluation
    def run(self, node: Node):
        args, kwargs = self.value(node.args), {k: self.value(v) for k, v in node.kwargs.items()}
        leaves = [x for x in _flat((args, kwargs)) if _symbolic(x)]
        if not leaves:  # nothing symbolic: as the model computes it
            return self.graph.run(node, args, kwargs)
        op = node.op
        if op.endswith("_") and not op.startswith("_") and op not in _PASS:  # in place
            self.check_in_place(node)
            op = op[:-1]
        if op in _PASS:
            return args[0]
        if op in _MOVES:
            return self.move(node, args, kwargs)
        fn = TRANSLATIONS.get(op)
        if fn is None:
            raise self.fail(node, "has no symbolic translation for discovery: write the layer with "
                            "gaugemath.discovery.layer (declared functions), or express the operation with supported "
                            f"ones ({', '.join(sorted(TRANSLATIONS))} and data movement)")
        return fn(self, node, args, kwargs)

    def check_in_place(self, node: Node) -> None:
        """An in-place operation is evaluated as its out-of-place twin, which is exact only when nothing else
        sees the tensor it overwrites: refused when that tensor is a view of another, or has a view."""
        target = node.inputs()[0] if node.inputs() else None
        if target is None:
            return
        if target.kind == "op" and target.op in _MOVES:
            raise self.fail(node, f"writes in place into a view ({target.op}) of another tensor: write the "
                            "operation out of place (discovery evaluates values, not storage)")
        views = [u for u in target.users if u is not node and u.op in _MOVES]
        if views:
            raise self.fail(node, f"writes in place into a tensor that a view ({views[0].op}) also reads: write "
                            "the operation out of place (discovery evaluates values, not storage)")

    def move(self, node: Node, args, kwargs):
        """Run a data-movement node on integer positions into a pool of entries (position 0: the number 0, so
        zero padding pads with zeros)."""
        pool: list = [sp.Integer(0)]

        def index(v):
            if _symbolic(v) or (isinstance(v, torch.Tensor) and v.is_floating_point()):
                o = self.obj(v)
                start = len(pool)
                pool.extend(o.reshape(-1).tolist())
                return torch.arange(start, start + o.size, dtype=torch.int64).reshape(o.shape)
            if isinstance(v, (list, tuple)):
                return type(v)(index(x) for x in v)
            return v

        args = tuple(index(a) for a in args)  # integer operands (embedding ids, gather indices) stay as they are
        kwargs = {k: index(v) for k, v in kwargs.items()}
        if node.op in ("pad", "constant_pad_nd"):  # pad(input, pad, mode, value); constant_pad_nd(input, pad, value)
            at = 3 if node.op == "pad" else 2
            value = kwargs.get("value", args[at] if len(args) > at else None)
            if value not in (0, 0.0, None):  # pad with the position of the padding value in the pool
                pool.append(self.consts.number(value))
                if "value" in kwargs or len(args) <= at:
                    kwargs["value"] = len(pool) - 1
                else:
                    args = args[:at] + (len(pool) - 1,) + args[at + 1:]
        out = self.graph.run(node, args, kwargs)
        table = np.empty(len(pool), dtype=object)
        table[:] = pool
        return _map(out, lambda t: table[t.numpy()] if isinstance(t, torch.Tensor) and not t.is_floating_point()
                    else t)

    def leaky(self, slope: float) -> Callable:
        if slope not in self.declared:
            name = f"leaky_relu_{len(self.declared)}" if self.declared else "leaky_relu"
            self.declared[slope] = declare(name, value=lambda z, a=slope: np.where(z > 0, z, a * z),
                                           derivative=lambda z, a=slope: np.where(z > 0, 1.0, a), degree=1)
            self.assumptions.append(f"{name}(z) = max(z, 0) + {slope!r}·min(z, 0) is positively homogeneous of "
                                    "degree 1 (torch.nn.functional.leaky_relu)")
        return self.declared[slope]


def _flat(x) -> list:
    if isinstance(x, dict):
        return [y for v in x.values() for y in _flat(v)]
    if isinstance(x, (list, tuple)):
        return [y for v in x for y in _flat(v)]
    return [x]


def _map(x, f):
    if isinstance(x, (list, tuple)):
        return type(x)(_map(v, f) for v in x)
    return f(x)


def _elementwise(f):
    return np.frompyfunc(f, 1, 1)


def _axes(dim, ndim: int) -> tuple[int, ...]:
    if dim is None or dim == []:
        return tuple(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return tuple(d % ndim for d in dims)


def _sum(a: np.ndarray, dim=None, keepdim: bool = False) -> np.ndarray:
    out = np.sum(a, axis=_axes(dim, a.ndim), keepdims=keepdim)
    return np.asarray(out, dtype=object)


def _softmax_last(z: np.ndarray) -> np.ndarray:
    e = _elementwise(sp.exp)(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _log_softmax_last(z: np.ndarray) -> np.ndarray:
    return z - _elementwise(sp.log)(np.sum(_elementwise(sp.exp)(z), axis=-1, keepdims=True))


def _along(f, z: np.ndarray, dim: int) -> np.ndarray:
    moved = np.moveaxis(z, dim, -1)
    return np.moveaxis(f(moved), -1, dim)


# ---------------------------------------------------------------------- translations
def _linear(ev, node, args, kwargs):
    x, w = ev.obj(args[0]), ev.obj(args[1])
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    y = np.matmul(x, w.T)
    return y + ev.obj(b) if b is not None else y


def _addmm(ev, node, args, kwargs):
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    return ev.obj(beta) * ev.obj(args[0]) + ev.obj(alpha) * np.matmul(ev.obj(args[1]), ev.obj(args[2]))


def _matmul(ev, node, args, kwargs):
    return np.asarray(np.matmul(ev.obj(args[0]), ev.obj(args[1])), dtype=object)


def _add(ev, node, args, kwargs):
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    return ev.obj(args[0]) + ev.obj(alpha) * ev.obj(args[1])


def _sub(ev, node, args, kwargs):
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    return ev.obj(args[0]) - ev.obj(alpha) * ev.obj(args[1])


def _rsub(ev, node, args, kwargs):
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    return ev.obj(args[1]) - ev.obj(alpha) * ev.obj(args[0])


def _div(ev, node, args, kwargs):
    if kwargs.get("rounding_mode") is not None:
        raise ev.fail(node, "rounded division is not differentiable")
    return ev.obj(args[0]) / ev.obj(args[1])


def _pow(ev, node, args, kwargs):
    base, exp = args[0], args[1]
    if _symbolic(exp) or isinstance(exp, torch.Tensor):
        raise ev.fail(node, "a tensor exponent is not supported (write exp/log)")
    e = ev.consts.number(exp) if not isinstance(exp, int) else sp.Integer(exp)
    return _elementwise(lambda z: z**e)(ev.obj(base))


def _unary(f):
    return lambda ev, node, args, kwargs: _elementwise(f)(ev.obj(args[0]))


def _gelu(ev, node, args, kwargs):
    if kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh":
        c = sp.sqrt(2 / sp.pi)
        return _elementwise(lambda z: z * (1 + sp.tanh(c * (z + sp.Rational(44715, 1000000) * z**3))) / 2)(
            ev.obj(args[0]))
    return _elementwise(lambda z: z * (1 + sp.erf(z / sp.sqrt(2))) / 2)(ev.obj(args[0]))


def _leaky(ev, node, args, kwargs):
    slope = float(kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01))
    f = ev.leaky(slope)
    return _elementwise(f)(ev.obj(args[0]))


def _softmax(ev, node, args, kwargs):
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    return _along(_softmax_last, ev.obj(args[0]), dim)


def _log_softmax(ev, node, args, kwargs):
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    return _along(_log_softmax_last, ev.obj(args[0]), dim)


def _mean(ev, node, args, kwargs):
    x = ev.obj(args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    axes = _axes(dim, x.ndim)
    return _sum(x, axes, keep) / sp.Integer(math.prod(x.shape[a] for a in axes))


def _sum_op(ev, node, args, kwargs):
    x = ev.obj(args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return _sum(x, dim, keep)


def _layer_norm(ev, node, args, kwargs):
    x = ev.obj(args[0])
    shape = args[1]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    b = args[3] if len(args) > 3 else kwargs.get("bias")
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    n = sp.Integer(math.prod(shape))
    mu = _sum(x, axes, True) / n
    c = x - mu
    var = _sum(c * c, axes, True) / n
    y = c * _elementwise(lambda v: 1 / sp.sqrt(v + ev.consts.number(eps)))(var)
    if w is not None:
        y = y * ev.obj(w)
    if b is not None:
        y = y + ev.obj(b)
    return y


def _rms_norm(ev, node, args, kwargs):
    x = ev.obj(args[0])
    shape = args[1]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    eps = args[3] if len(args) > 3 else kwargs.get("eps")
    if eps is None:  # ATen: the eps of the input's dtype
        eps = torch.finfo(ev.dtype).eps
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    ms = _sum(x * x, axes, True) / sp.Integer(math.prod(shape))
    y = x * _elementwise(lambda v: 1 / sp.sqrt(v + ev.consts.number(eps)))(ms)
    return y * ev.obj(w) if w is not None else y


def _sdpa(ev, node, args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    a = dict(zip(names, args))
    a.update(kwargs)
    q, k, v = ev.obj(a["query"]), ev.obj(a["key"]), ev.obj(a["value"])
    if float(a.get("dropout_p", 0.0) or 0.0) != 0.0:
        raise ev.fail(node, "attention dropout: trace the module in eval mode")
    if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = np.repeat(k, rep, axis=-3), np.repeat(v, rep, axis=-3)
    scale = a.get("scale")
    scale = ev.consts.number(1 / math.sqrt(q.shape[-1])) if scale is None else ev.consts.number(scale)
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    lq, lk = s.shape[-2], s.shape[-1]
    keep = np.ones((lq, lk), dtype=bool)
    if a.get("is_causal"):
        keep &= np.tril(np.ones((lq, lk), dtype=bool))
    mask = a.get("attn_mask")
    if mask is not None:
        if _symbolic(mask):
            raise ev.fail(node, "an attention mask that depends on the parameters is not supported")
        if mask.dtype == torch.bool:
            keep = keep & mask.numpy()
        else:
            s = s + ev.obj(mask)
    s = np.where(keep, s, -sp.oo)
    p = _softmax_last(s)
    return np.asarray(np.matmul(p, v), dtype=object)


def _cross_entropy(ev, node, args, kwargs):
    names = ("input", "target", "weight", "reduction", "ignore_index", "label_smoothing")
    a = dict(zip(names, args))
    a.update(kwargs)
    z, t = ev.obj(a["input"]), a["target"]
    if a.get("weight") is not None or float(a.get("label_smoothing", 0.0) or 0.0) != 0.0:
        raise ev.fail(node, "class weights and label smoothing are not supported")
    if _symbolic(t) or t.is_floating_point():
        raise ev.fail(node, "soft (floating) targets are not supported: pass class indices")
    if z.ndim > 2:  # (N, C, d1, …) -> (N·d1…, C)
        z = np.moveaxis(z, 1, -1).reshape(-1, z.shape[1])
    t = t.reshape(-1).tolist()
    ignore = a.get("ignore_index", -100)
    logp = _log_softmax_last(z.reshape(-1, z.shape[-1]))
    per = [sp.Integer(0) if c == ignore else -logp[i, c] for i, c in enumerate(t)]  # torch: 0 where ignored
    reduction = a.get("reduction", 1)
    kept = sum(c != ignore for c in t)
    if reduction in (1, "mean"):
        return np.array(sp.Add(*per) / kept, dtype=object)
    if reduction in (2, "sum"):
        return np.array(sp.Add(*per), dtype=object)
    out = np.empty(len(per), dtype=object)
    out[:] = per
    return out


def _masked_fill(ev, node, args, kwargs):
    mask = args[1]
    if _symbolic(mask):
        raise ev.fail(node, "a mask that depends on the parameters is not supported")
    x, fill = ev.obj(args[0]), ev.obj(args[2])
    return np.asarray(np.where(mask.numpy(), fill, x), dtype=object)


def _where(ev, node, args, kwargs):
    cond = args[0]
    if _symbolic(cond):
        raise ev.fail(node, "a condition that depends on the parameters is not supported")
    return np.asarray(np.where(cond.numpy(), ev.obj(args[1]), ev.obj(args[2])), dtype=object)


def _like(value):
    def f(ev, node, args, kwargs):
        return np.full(ev.obj(args[0]).shape, sp.Integer(value), dtype=object)

    return f


#: symbolic translations of ATen operations (by the graph's neutral op name)
TRANSLATIONS: dict[str, Callable] = {
    "linear": _linear, "addmm": _addmm, "matmul": _matmul, "mm": _matmul, "bmm": _matmul,
    "add": _add, "sub": _sub, "rsub": _rsub, "mul": lambda ev, n, a, k: ev.obj(a[0]) * ev.obj(a[1]),
    "div": _div, "neg": lambda ev, n, a, k: -ev.obj(a[0]), "pow": _pow,
    "square": lambda ev, n, a, k: ev.obj(a[0]) * ev.obj(a[0]),
    "sqrt": _unary(sp.sqrt), "rsqrt": _unary(lambda z: 1 / sp.sqrt(z)), "reciprocal": _unary(lambda z: 1 / z),
    "exp": _unary(sp.exp), "log": _unary(sp.log), "tanh": _unary(sp.tanh),
    "sigmoid": _unary(lambda z: 1 / (1 + sp.exp(-z))), "silu": _unary(lambda z: z / (1 + sp.exp(-z))),
    "relu": lambda ev, n, a, k: _elementwise(lambda z: relu(z))(ev.obj(a[0])),
    "gelu": _gelu, "leaky_relu": _leaky,
    "softmax": _softmax, "_softmax": _softmax, "log_softmax": _log_softmax, "_log_softmax": _log_softmax,
    "mean": _mean, "sum": _sum_op, "layer_norm": _layer_norm, "rms_norm": _rms_norm,
    "scaled_dot_product_attention": _sdpa, "cross_entropy_loss": _cross_entropy,
    "masked_fill": _masked_fill, "where": _where,
    "zeros_like": _like(0), "ones_like": _like(1),
}


# ---------------------------------------------------------------------- public
def module_layer(module: nn.Module, example, *, loss: str | Callable | None = None, name: str | None = None,
                 widths: Mapping[str, int] | None = None) -> Layer:
    """The symbolic :class:`Layer` of ``module`` on ``example`` (module docstring).

    ``example`` and ``loss`` are ``bind()``'s: inputs for one forward pass (a tensor, a tuple, or a dict of
    keyword inputs — keyword inputs are read as constants, so pass floating inputs positionally) and what must
    stay unchanged (``None``: the output's ``loss`` or every output; ``"cross_entropy"``: the log-softmax of
    the logits). ``Layer.parameters`` maps each block to the module's parameter name.
    """
    from gaugemath.backends.torch.binding import _example, _loss, target_of
    from gaugemath.structure.torch_trace import trace

    name = name or type(module).__name__
    was_training = module.training
    module.eval()  # dropout off: the traced function is the deterministic one the gauges act on
    try:
        args, kwargs = _example(module, example)
        graph = trace(module, args, kwargs, target_of(_loss(module, loss)))
    finally:
        module.train(was_training)
    floating = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if floating:
        raise GaugeError(name, floating[0], "a floating keyword input would be read as a constant (a symmetry must "
                         "hold for every input): pass floating inputs positionally")
    dtype = next((p.dtype for p in module.parameters()), torch.get_default_dtype())
    ev = _Evaluator(graph, name, dtype)
    params: dict[str, sp.Matrix] = {}
    sources: dict[str, str] = {}
    inputs: dict[str, sp.Matrix] = {}
    blocks = {_block_name(n.name) for n in graph.nodes if n.kind == "param"}
    for node in graph.nodes:
        if node.kind == "param":
            shape = node.shape
            if len(shape) > 2:
                raise GaugeError(name, node.name, f"parameter of shape {shape}: discovery takes vectors and matrices "
                                 "(reshape it in the module, or write the layer with gaugemath.discovery.layer)")
            rows, cols = (shape[0], 1) if len(shape) == 1 else ((1, 1) if not shape else shape)
            block = _block_name(node.name)
            if block in sources:
                raise GaugeError(name, node.name, f"its block name '{block}' is also that of {sources[block]}: "
                                 "rename one of the two parameters")
            m = block_symbols(block, rows, cols)
            params[block], sources[block] = m, node.name
            ev.values[node] = np.array(m.tolist(), dtype=object).reshape(shape)
        elif node.kind == "input":
            v = node.value
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not node.constant:
                label = f"x{len(inputs)}"
                while label in blocks:
                    label += "_in"
                rows = math.prod(v.shape[:-1]) if v.dim() > 1 else (v.shape[0] if v.dim() else 1)
                cols = v.shape[-1] if v.dim() > 1 else 1
                m = sp.Matrix(rows, cols, lambda i, j, label=label: sp.Symbol(f"{label}[{i},{j}]"))
                inputs[label] = m
                ev.values[node] = np.array(m.tolist(), dtype=object).reshape(tuple(v.shape))
            else:
                ev.values[node] = v
        else:
            try:
                ev.values[node] = ev.run(node)
            except GaugeError:
                raise
            except Exception as e:  # noqa: BLE001 - an operand form the translation did not expect
                raise ev.fail(node, f"could not be evaluated symbolically ({type(e).__name__}: {e})") from e
    outs = [e for o in graph.outputs for e in (ev.obj(ev.values[o]).reshape(-1).tolist())]
    read = set().union(*(sp.sympify(e).free_symbols for e in outs)) if outs else set()
    for block, m in params.items():  # an entry the example never reads would come out as a free "symmetry"
        unread = [(i, j) for i in range(m.rows) for j in range(m.cols) if m[i, j] not in read]
        if len(unread) == m.rows * m.cols:
            raise GaugeError(name, sources[block], "the parameter does not reach the outputs on this example (every "
                             "linear map of it would be a trivial symmetry): give an example that uses it")
        if unread:
            rows_unread = sorted({i for i, _ in unread if all((i, j) in unread for j in range(m.cols))})
            what = f"rows {rows_unread}" if rows_unread else f"entries {unread[:4]}"
            raise GaugeError(name, sources[block], f"{what} are not read by the example (e.g. token ids that do not "
                             "cover the vocabulary): give an example that reads every entry")
    scalar = len(outs) == 1 and len(graph.outputs) == 1 and not graph.outputs[0].shape
    at = ", ".join(f"{k}={v}" for k, v in (widths or {}).items()) or "as given"
    lay = layer(name, params, inputs, sp.Matrix(outs), loss="scalar" if scalar else "outputs",
                constants=dict(ev.consts.values), assumptions=tuple(ev.assumptions),
                description=f"{name} traced from its nn.Module (widths {at})", widths=widths)
    return replace(lay, parameters=sources)
