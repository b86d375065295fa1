"""Work layout of bound JAX leaves: the functional twin of the torch binding's layout helpers.

A :class:`~gaugemath.backends._spec.Layout` says how the optimizer sees each bound leaf: transposed
(a flax kernel stored ``(in, out)``), rows permuted, and row ranges of it as further entries
(a fused projection's query rows, a grouped-query head group). JAX has no aliasing views, so after
a family changes an entry, :func:`sync` writes a changed row view back into its leaf and re-slices
every view from its leaf: the same arrays the torch backend shares by storage.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._spec import Layout


def to_work(layout: Layout, leaves: list, dtype=None) -> list:
    """Per-leaf arrays (stored layout) in the work layout (transposed, rows permuted), in ``dtype``."""
    return [to_work_one(layout, i, t, dtype) for i, t in enumerate(leaves)]


def to_work_one(layout: Layout, index: int, t, dtype=None):
    """Leaf ``index``'s array (or one shaped like it: a moment) in the work layout."""
    w = t.astype(dtype) if dtype is not None else t
    w = w.T if layout.transpose[index] else w
    perm = layout.perms[index]
    return w[jnp.asarray(perm)] if perm is not None else w


def from_work(layout: Layout, index: int, w):
    """Leaf ``index``'s work-layout array back in its stored layout."""
    perm = layout.perms[index]
    if perm is not None:
        inv = [0] * len(perm)
        for k, r in enumerate(perm):
            inv[r] = k
        w = w[jnp.asarray(inv)]
    return w.T if layout.transpose[index] else w


def entries(layout: Layout, work: list) -> list:
    """Work arrays, then the row views of the layout (copies: keep them in step with :func:`sync`)."""
    return list(work) + [work[i][a:b] for i, a, b in layout.views]


def sync(layout: Layout, before: list, after: list) -> list:
    """``after`` (a family's output on ``before``) with every changed row view written into its leaf
    and every view re-sliced from its leaf."""
    n = len(layout.transpose)
    out = list(after)
    for j, (i, a, b) in enumerate(layout.views):
        if out[n + j] is not before[n + j]:
            out[i] = out[i].at[a:b].set(out[n + j])
    for j, (i, a, b) in enumerate(layout.views):
        out[n + j] = out[i][a:b]
    return out
