"""The traced computation as the detector sees it: operations on named parameters, with shapes.

A :class:`Graph` lists :class:`Node` s in execution order. A node is a parameter, an input, a
constant or one operation; ``op`` is a framework-neutral name (``"linear"``, ``"view"``, ``"relu"``,
``"scaled_dot_product_attention"``, …) and ``args``/``kwargs`` hold nodes and plain values, as
the operation was called. ``shape`` is the shape of the value (``None`` for a non-tensor such as a
tuple from ``split``). A frontend also supplies ``run``: it executes a node's operation on other
arrays of the same shapes — the detector pushes integer *tag* arrays through the data-movement
operations (views, transposes, slices, concatenations) instead of re-implementing each of them,
so every layout trick a model uses is followed exactly as the model does it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Node:
    """One value of the computation.

    ``kind``: ``"param"`` (``name`` is the parameter's name), ``"input"``, ``"op"``; ``op``: the
    operation's neutral name for ``kind == "op"``; ``shape``: the value's shape (``None`` for a
    non-tensor value); ``users``: the operations reading this value, in execution order. For an
    input, ``value`` is the frontend's array it was traced with (where the frontend keeps it) and
    ``constant`` says it is not a model input but a tensor the computation reads (a buffer).
    """

    index: int
    kind: str
    op: str = ""
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    name: str = ""
    users: list[Node] = field(default_factory=list)
    value: Any = None
    constant: bool = False
    module: str = ""  # the module that issued an operation (where the frontend records it), for messages

    def inputs(self) -> list[Node]:
        """The nodes among ``args`` and ``kwargs`` (nested lists and tuples included)."""
        out: list[Node] = []
        _collect(self.args, out)
        _collect(tuple(self.kwargs.values()), out)
        return out

    def __repr__(self) -> str:
        what = self.name if self.kind == "param" else (self.op or self.kind)
        return f"%{self.index}:{what}{list(self.shape) if self.shape is not None else ''}"


def _collect(values, out: list[Node]) -> None:
    for v in values:
        if isinstance(v, Node):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            _collect(v, out)


@dataclass
class Graph:
    """Nodes in execution order, the parameters by name, and the outputs whose value must not change.

    ``run(node, args, kwargs)`` executes ``node``'s operation on arrays (the frontend's), with
    ``args``/``kwargs`` shaped like the node's; ``aliases`` maps every further name of a tied
    parameter to the name it is traced under.
    """

    nodes: list[Node]
    params: dict[str, Node]
    outputs: list[Node]
    run: Callable[[Node, tuple, dict], Any]
    aliases: dict[str, list[str]] = field(default_factory=dict)

    def is_output(self, node: Node) -> bool:
        return any(node is o for o in self.outputs)
