"""Which orbit families of a binding couple, decided once from the binding (no arrays).

At the canonical point ``Γ = XᵀX``. Families on disjoint tensors are orthogonal; so are a
column rescale and a row rotation of one matrix (``Θ[:, i]ᵀAΘ[:, i] = 0`` for skew ``A``) and a
column rescale and a class-axis translation canonicalised after it (centred columns). A row
rescale and a column rescale of one matrix overlap: ``⟨X_k, X_i⟩ = e_k e_i Σ_t θ̃_t[k, i]²``.
Those couplings form a bipartite graph; each connected component is solved by the Schur complement
on its smaller side. Anything else is refused (it is not orthogonal and not solved here).
"""

from __future__ import annotations

from dataclasses import dataclass

from gaugemath.errors import GaugeError


@dataclass
class Component:
    side_a: list[int]  # family indices on the Schur side (the smaller one)
    side_b: list[int]
    edges: list[tuple[int, int, int, bool]]  # (family in A, family in B, tensor index, A owns rows)

    def offsets(self, families) -> tuple[dict[int, int], dict[int, int]]:
        out = []
        for side in (self.side_a, self.side_b):
            acc, off = 0, {}
            for f in side:
                off[f] = acc
                acc += families[f].units
            out.append(off)
        return out[0], out[1]

    def edge_weights(self, families):
        """``(fa, fb, tensor, a_rows, e_a e_b)`` with the coefficients read from the generated coords."""
        for fa, fb, i, a_rows in self.edges:
            ra, rb = _role_of(families[fa], i), _role_of(families[fb], i)
            yield fa, fb, i, a_rows, families[fa]._coefficient("dot", ra) * families[fb]._coefficient("dot", rb)


def _role_of(fam, index: int) -> str:
    for s, i in fam.members():
        if i == index:
            return s.role
    raise KeyError(index)  # pragma: no cover


def _orthogonal(fa, ax: str, fb, ay: str, a: int, b: int, balanced: bool = False) -> bool:
    pair = {(fa.kind, ax), (fb.kind, ay)}
    if ({("scale", "cols"), ("scale", "all")} & pair) and ({("plane", "rows"), ("head", "rows")} & pair):
        return True  # a column (or whole-tensor) scaling is a rotation-invariant direction: ⟨Θ, AΘ⟩ = 0, A skew
    if ("scale", "cols") in pair and ("translate", "cols") in pair:
        if balanced:  # centred first, then balanced: a column scaling keeps the columns centred
            return True
        first = fa if a < b else fb  # the translation must be canonicalised after the scale
        return first.kind == "scale"
    return False


def _check_aliases(families, names: list[str], bases: list[int]) -> None:
    """Families on different entries of one parameter (a row view and the whole, or two row views).

    Two row views of one parameter are disjoint row ranges: families acting on their rows have
    disjoint supports. A column rescale of the whole parameter and a rotation of a row view's rows
    are orthogonal as on one tensor (``Θ[:, i]ᵀAΘ[:, i] = 0`` over the view's rows). Anything else
    across entries is refused: the projector would not see the overlap.
    """
    by_base: dict[int, list[tuple[int, int, str, str]]] = {}
    for f, fam in enumerate(families):
        for s, i in fam.members():
            axis = "rows" if fam.kind in ("plane", "head") else s.axis
            by_base.setdefault(bases[i], []).append((f, i, fam.kind, axis))
    for base, uses in by_base.items():
        for x in range(len(uses)):
            for y in range(x + 1, len(uses)):
                (f, i, kf, af), (g, j, kg, ag) = uses[x], uses[y]
                if i == j or f == g:
                    continue
                whole_vs_view = {(i == base), (j == base)} == {True, False}
                if not whole_vs_view and af == ag == "rows":
                    continue  # disjoint row views
                pair = {(kf, af, i == base), (kg, ag, j == base)}
                if whole_vs_view and any(k == "scale" and a == "cols" and whole for k, a, whole in pair) and \
                        any(k in ("plane", "head") and not whole for k, a, whole in pair):
                    continue
                raise GaugeError(families[g].family.gauge, names[j],
                                 f"'{families[f].name}' acts on {names[i]} ({af}) and '{families[g].name}' on "
                                 f"{names[j]} ({ag}), two parts of one parameter: their joint projector is not "
                                 "supported")


class Coupling:
    """Components of coupled families for a list of bound families (any backend).

    ``bases[i]``: the parameter entry ``i`` belongs to (row views of a parameter, see
    :class:`~gaugemath.backends._spec.Layout`); default: every entry is its own parameter.
    ``balanced``: the frames are ``"balanced"`` (translations canonicalised before the scales).
    """

    def __init__(self, families, names: list[str], bases: list[int] | None = None, balanced: bool = False):
        if bases is not None:
            _check_aliases(families, names, bases)
        owners: dict[int, list[tuple[int, str]]] = {}
        for f, fam in enumerate(families):
            for s, i in fam.members():
                owners.setdefault(i, []).append((f, s.axis))
        adjacency: dict[int, set[int]] = {f: set() for f in range(len(families))}
        edges = []
        for i, fs in owners.items():
            for x in range(len(fs)):
                for y in range(x + 1, len(fs)):
                    (f, ax), (g, ay) = fs[x], fs[y]
                    if f == g:
                        continue
                    if {families[f].kind, families[g].kind} == {"scale"} and {ax, ay} == {"rows", "cols"}:
                        edges.append((f, g, i, ax == "rows"))
                        adjacency[f].add(g)
                        adjacency[g].add(f)
                    elif not _orthogonal(families[f], ax, families[g], ay, f, g, balanced):
                        raise GaugeError(families[g].family.gauge, names[i],
                                         f"parameter is bound to '{families[f].name}' ({ax}) and "
                                         f"'{families[g].name}' ({ay}): these orbit families are not orthogonal "
                                         "and their joint projector is not supported")
        self.components: list[Component] = []
        seen: set[int] = set()
        for start in range(len(families)):
            if start in seen or not adjacency[start]:
                continue
            colour, stack = {start: 0}, [start]
            while stack:
                f = stack.pop()
                for g in adjacency[f]:
                    if g not in colour:
                        colour[g] = 1 - colour[f]
                        stack.append(g)
                    elif colour[g] == colour[f]:
                        raise GaugeError(families[g].family.gauge, None,
                                         f"orbit families '{families[f].name}' and '{families[g].name}' "
                                         "couple in an odd cycle; the joint projector is not supported")
            seen |= set(colour)
            sides = [sorted(f for f, c in colour.items() if c == s) for s in (0, 1)]
            sizes = [sum(families[f].units for f in side) for side in sides]
            a, b = (sides[0], sides[1]) if sizes[0] <= sizes[1] else (sides[1], sides[0])
            comp_edges = [(f, g, i, r) if f in a else (g, f, i, not r) for f, g, i, r in edges if f in colour]
            self.components.append(Component(a, b, comp_edges))
        self.coupled = {f for c in self.components for f in c.side_a + c.side_b}
