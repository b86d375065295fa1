"""A layer as discovery sees it: outputs as SymPy expressions in named parameter and input matrices.

A :class:`Layer` is one *instance* at concrete (small) widths: parameter blocks ``θ_B`` (``r×c``
matrices of real symbols ``B[i,j]``), input blocks, the output expressions ``f_o(θ, x)`` and the
numerical values of any other symbol (a norm's ``ε``, RoPE's cos/sin). A symmetry of the layer
is a transformation of ``θ`` that leaves every ``f_o`` unchanged for all inputs ``x`` (so any
loss of the outputs is invariant); with ``loss="scalar"`` the single output is itself the loss.

:func:`layer` builds and validates one; it accepts ``sympy.MatrixSymbol`` s (replaced by explicit
symbol matrices) or explicit matrices from :func:`gaugemath.block_symbols`. What the method can
handle is checked here, with an error that says what to declare: every function must be declared
(:mod:`gaugemath.discovery.functions`), parameters may not appear in an exponent or inside a
non-differentiable function, and every symbol must be a parameter, an input or a constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import sympy as sp

from ..errors import GaugeError
from ..gauge import Params, ReferenceModel, block_symbols
from .functions import ELEMENTARY, REGISTRY, lookup
from .graph import topological

LOSSES = ("outputs", "scalar")


@dataclass(frozen=True)
class Layer:
    """One instance of a layer (see the module docstring).

    ``forward`` is the staged forward pass ``forward(params, inputs, stage)`` the proofs run
    (:class:`gaugemath.gauge.ReferenceModel`); :func:`layer` derives it from ``outputs``.
    """

    name: str
    params: Params
    inputs: Params
    outputs: tuple[sp.Expr, ...]
    forward: Callable
    loss: str = "outputs"
    constants: dict = field(default_factory=dict)
    description: str = ""
    assumptions: tuple[str, ...] = ()
    widths: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)  # block -> the nn.Module parameter it was traced from

    @property
    def coordinates(self) -> list[sp.Symbol]:
        """``θ`` flattened block by block, row-major (length ``n``)."""
        return [s for m in self.params.values() for s in m]

    @property
    def input_symbols(self) -> list[sp.Symbol]:
        """The free symbols of the inputs (an input entry may be an expression, e.g. ``1 − Σ p_i``)."""
        seen: dict = {}
        for m in self.inputs.values():
            for e in m:
                for s in sorted(e.free_symbols, key=str):
                    seen.setdefault(s, None)
        return list(seen)

    def model(self) -> ReferenceModel:
        """The core's :class:`~gaugemath.gauge.ReferenceModel` of this layer (what ``prove`` runs)."""
        return ReferenceModel(description=self.description or f"layer '{self.name}'", inputs=dict(self.inputs),
                              forward=self.forward, generic_loss=self.loss == "outputs",
                              assumptions=self.assumptions, constants=dict(self.constants))


def _explicit(layer: str, name: str, m) -> tuple[sp.Matrix, dict]:
    """``(explicit symbol matrix, {MatrixElement: symbol})`` for a block given in any accepted form."""
    if isinstance(m, sp.MatrixSymbol):
        rows, cols = m.shape
        if not (sp.sympify(rows).is_Integer and sp.sympify(cols).is_Integer):
            raise GaugeError(layer, name, f"shape {m.shape} is symbolic: build the layer at concrete small widths "
                             "(discover derives at several widths and states the general form)")
        ex = block_symbols(name, int(rows), int(cols))
        return ex, {m[i, j]: ex[i, j] for i in range(int(rows)) for j in range(int(cols))}
    if isinstance(m, sp.Symbol):
        return sp.Matrix([[m]]), {}
    if isinstance(m, sp.MatrixBase):
        bad = [e for e in m if not isinstance(e, sp.Symbol)]
        if bad:
            raise GaugeError(layer, name, f"entry {bad[0]} is not a symbol: blocks are matrices of distinct symbols")
        return sp.Matrix(m), {}
    raise GaugeError(layer, name, f"expected a MatrixSymbol or a matrix of symbols, got {type(m).__name__}")


def _blocks(layer: str, given) -> tuple[Params, dict]:
    if isinstance(given, Mapping):
        items = list(given.items())
    else:
        items = [(str(m.name) if hasattr(m, "name") else str(m), m) for m in given]
    out, table = {}, {}
    for name, m in items:
        out[name], t = _explicit(layer, name, m)
        table.update(t)
    return out, table


def _as_list(outputs, table: dict) -> list[sp.Expr]:
    if isinstance(outputs, sp.MatrixExpr) and not isinstance(outputs, sp.MatrixBase):
        outputs = outputs.as_explicit()
    if isinstance(outputs, sp.MatrixBase):
        items = list(outputs)
    elif isinstance(outputs, (list, tuple)):
        items = [e for o in outputs for e in (list(o.as_explicit()) if isinstance(o, sp.MatrixExpr) else [o])]
    else:
        items = [outputs]
    return [sp.sympify(e).xreplace(table) for e in items]


#: Functions SymPy knows that have no declared derivative/scaling property for discovery.
_UNDIFFERENTIABLE = ("Abs", "sign", "Max", "Min", "Heaviside", "floor", "ceiling", "Piecewise")


def validate(name: str, outputs: Sequence[sp.Expr], params: Params, inputs: Params, constants: Mapping) -> None:
    """Raise a :class:`GaugeError` naming what to declare if discovery cannot handle ``outputs``."""
    theta = {s for m in params.values() for s in m}
    known = theta | {s for m in inputs.values() for e in m for s in sp.sympify(e).free_symbols} | set(constants)
    clash = set(params) & set(inputs)
    if clash:
        raise GaugeError(name, sorted(clash)[0], "is both a parameter block and an input")
    symbols: dict = {}  # node -> its free symbols, computed once per distinct node of the DAG
    order = topological(outputs)
    for node in order:
        if isinstance(node, sp.MatrixExpr):
            raise GaugeError(name, None, f"an output holds the matrix expression {sp.sstr(node)[:60]}: inconsistent "
                             "shapes or a non-scalar output (apply functions element-wise to explicit matrices)")
        symbols[node] = {node} if node.is_Symbol else set().union(*(symbols[a] for a in node.args))
    for o, out in enumerate(outputs):
        stray = symbols[out] - known
        if stray:
            s = sorted(stray, key=str)[0]
            raise GaugeError(name, None, f"output {o}: symbol '{s}' is neither a parameter, an input nor a constant; "
                             "declare it in inputs= (random at every sample) or constants= (a fixed value)")
    depends: dict = {}
    for node in order:
        depends[node] = node in theta or any(depends[a] for a in node.args)
        if node.is_Atom or isinstance(node, (sp.Add, sp.Mul)):
            continue
        if isinstance(node, sp.Pow):
            if depends[node.exp]:
                raise GaugeError(name, None, f"parameter in an exponent ({node}): non-polynomial parameter "
                                 "dependence the method cannot handle; rewrite it with exp/log or a declared function")
            continue
        if isinstance(node, sp.Function) and len(node.args) == 1 and (
                type(node) in ELEMENTARY or type(node).__name__ in REGISTRY):
            continue
        if isinstance(node, sp.Function) and type(node).__name__ not in _UNDIFFERENTIABLE:
            lookup(node, name)  # raises with what to declare
        raise GaugeError(name, None, f"'{type(node).__name__}' in {sp.sstr(node)[:80]} has no declared value, "
                         "derivative or scaling property: write it with declared functions (relu, relu2, silu, gelu, "
                         "tanh, exp, log) or declare it with gaugemath.discovery.declare(...)")
    used = set().union(*(symbols[out] for out in outputs)) if outputs else set()
    for b, m in params.items():
        if not set(m) & used:
            raise GaugeError(name, b, "parameter block does not appear in the outputs (every linear map of it would "
                             "be a trivial symmetry); make it an input or remove it")


def staged_forward(outputs: Sequence[sp.Expr], coordinates: Sequence[sp.Symbol],
                   input_symbols: Sequence[sp.Symbol]) -> Callable:
    """A staged ``forward(params, inputs, stage)`` that rebuilds ``outputs`` bottom-up.

    Every ``Add``, function application, non-integer power and output passes through ``stage``,
    as the hand-written reference layers of :mod:`gaugemath.layers` do (the proofs put each
    intermediate in canonical form or truncate it to first order there). Shared subexpressions
    are rebuilt once.
    """
    coordinates, input_symbols = list(coordinates), list(input_symbols)

    def forward(params: Params, inputs: Params, stage) -> list[sp.Expr]:
        subs = dict(zip(coordinates, [e for m in params.values() for e in m]))
        subs.update(zip(input_symbols, [e for m in inputs.values() for e in m]))
        memo: dict = {}

        def rebuild(e):
            hit = memo.get(e)
            if hit is not None:
                return hit
            if e.is_Symbol:
                r = subs.get(e, e)
            elif not e.args:
                r = e
            else:
                r = e.func(*[rebuild(a) for a in e.args])
                if isinstance(e, (sp.Add, sp.Function)) or (isinstance(e, sp.Pow) and not e.exp.is_Integer):
                    r = stage(r)
            memo[e] = r
            return r

        return [stage(rebuild(o)) for o in outputs]

    return forward


def layer(name: str, params, inputs, outputs, *, loss: str = "outputs", constants: Mapping | None = None,
          description: str = "", assumptions: Sequence[str] = (), widths: Mapping | None = None) -> Layer:
    """Build and validate a :class:`Layer`.

    Args:
        name: used in messages and certificates.
        params: ``{name: MatrixSymbol | matrix of symbols}`` or a list of ``MatrixSymbol`` s: the blocks ``θ``.
        inputs: the same for inputs ``x`` (sampled at random; a symmetry must hold for all of them).
        outputs: a matrix (or matrix expression, or list of scalars) of outputs ``f_o(θ, x)``.
        loss: ``"outputs"`` (every output invariant: a symmetry of any loss of them) or ``"scalar"``
            (one output, the loss itself, e.g. a cross-entropy).
        constants: ``{symbol: value}`` for every other symbol (kept symbolic in proofs).
        widths: the width parameters this instance was built with (for the general form).

    >>> import sympy as sp
    >>> from gaugemath.discovery import relu
    >>> W1, W2, x = sp.MatrixSymbol("W1", 2, 3), sp.MatrixSymbol("W2", 1, 2), sp.MatrixSymbol("x", 3, 1)
    >>> mlp = layer("mlp", [W1, W2], [x], W2 * relu(W1 * x))
    >>> len(mlp.coordinates), mlp.outputs[0].count(sp.Symbol("W2[0,1]"))
    (8, 1)
    """
    if loss not in LOSSES:
        raise GaugeError(name, None, f"loss={loss!r}: choose from {LOSSES}")
    p, ptab = _blocks(name, params)
    x, xtab = _blocks(name, inputs)
    outs = _as_list(outputs, {**ptab, **xtab})
    if not outs:
        raise GaugeError(name, None, "the layer has no outputs")
    if loss == "scalar" and len(outs) != 1:
        raise GaugeError(name, None, f"loss='scalar' needs exactly one output, got {len(outs)}")
    consts = dict(constants or {})
    validate(name, outs, p, x, consts)
    coords = [s for m in p.values() for s in m]
    return Layer(name, p, x, tuple(outs), staged_forward(outs, coords, [s for m in x.values() for s in m]),
                 loss, consts, description, tuple(assumptions), dict(widths or {}))


def from_reference(name: str, model: ReferenceModel, blocks: Params, widths: Mapping | None = None) -> Layer:
    """The layer of a catalogue gauge: its reference model with ``blocks`` as the parameters.

    The outputs are the model's forward pass with an identity stage; the proofs run the model's
    own staged forward.
    """
    inputs = {k: v for k, v in model.inputs.items() if k not in blocks}  # a block may also be listed as input
    outs = [sp.sympify(e) for e in model.forward(blocks, model.inputs, lambda e: e)]
    validate(name, outs, blocks, inputs, model.constants)
    return Layer(name, dict(blocks), inputs, tuple(outs), model.forward,
                 "outputs" if model.generic_loss else "scalar", dict(model.constants), model.description,
                 tuple(model.assumptions), dict(widths or {}))
