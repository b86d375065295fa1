"""Human-readable proof certificates: one Markdown file per catalogue name in ``proofs/``.

A certificate states what was derived (group, generators, brackets, frame, charges) and
every identity that was checked, with its residual after exact simplification. The text is
deterministic (no timings, no dummy symbols), so ``gaugemath prove --check`` can re-derive
everything and compare byte for byte: a stale or hand-edited certificate fails the check.

Constructions are proved in parallel worker processes (one per CPU core by default).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from .catalogue import CONSTRUCTIONS
from .describe import describe, short
from .proofs import Check, check_groups

#: Where ``gaugemath prove`` writes by default (the repository's ``proofs/`` folder).
DEFAULT_DIR = Path("proofs")



@dataclass(frozen=True)
class Row:
    """One checked identity, as printed (crosses process boundaries)."""

    kind: str
    statement: str
    residual: str
    passed: bool


@dataclass(frozen=True)
class VariantResult:
    """What one construction's proof produced."""

    name: str
    variant: str
    summary: str
    description: str
    rows: tuple[Row, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def checks(self) -> int:
        return len(self.rows)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(f"{r.statement}: residual = {r.residual}" for r in self.rows if not r.passed)


def _row(c: Check) -> Row:
    zero = c.residual == 0 if not isinstance(c.residual, sp.MatrixBase) else all(e == 0 for e in c.residual)
    resid = "0" if zero else short(c.residual)
    if not c.expect_zero:
        resid = f"≠ 0: {resid}"
    statement = c.statement + (f" — {c.detail}" if c.detail else "")
    return Row(c.kind, statement, resid, c.passed)


def _run_part(job: tuple[str, int, int]) -> tuple[tuple[str, int, int], object, float]:
    """Worker: part ``-1`` describes the construction, part ``i ≥ 0`` runs check group ``i``."""
    name, index, part = job
    t0 = time.perf_counter()
    gauge = CONSTRUCTIONS[name][index][1]()
    if part < 0:
        out = (gauge.summary, describe(gauge, max_metric=12))
    else:
        out = tuple(_row(c) for c in check_groups(gauge)[part](gauge))
    return job, out, time.perf_counter() - t0


#: Rough cost ranking used to schedule the slowest parts first (keeps both cores busy).
_HEAVY = ("transformer_block", "head_rotation")


def prove_catalogue(names: list[str] | None = None, processes: int | None = None) -> dict[str, list[VariantResult]]:
    """Prove every construction of ``names`` (all by default) in parallel; ordered as CONSTRUCTIONS."""
    names = list(CONSTRUCTIONS) if names is None else names
    unknown = [n for n in names if n not in CONSTRUCTIONS]
    if unknown:
        raise KeyError(f"unknown gauge {unknown[0]!r}; known: {', '.join(CONSTRUCTIONS)}")
    jobs = []
    for n in names:
        for i, (_, build) in enumerate(CONSTRUCTIONS[n]):
            parts = len(check_groups(build()))
            jobs += [(n, i, p) for p in range(-1, parts)]
    jobs.sort(key=lambda j: (j[0] not in _HEAVY, _HEAVY.index(j[0]) if j[0] in _HEAVY else 0))
    processes = processes or min(len(jobs), os.cpu_count() or 1)
    if processes > 1:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            done = {job: (out, dt) for job, out, dt in pool.imap_unordered(_run_part, jobs, chunksize=1)}
    else:
        done = {job: (out, dt) for job, out, dt in map(_run_part, jobs)}
    results = {}
    for n in names:
        results[n] = []
        for i, (variant, _) in enumerate(CONSTRUCTIONS[n]):
            parts = sorted(p for (m, j, p) in done if m == n and j == i)
            (summary, text), _ = done[(n, i, -1)]
            rows = tuple(r for p in parts if p >= 0 for r in done[(n, i, p)][0])
            seconds = sum(done[(n, i, p)][1] for p in parts)
            results[n].append(VariantResult(n, variant, summary, text, rows, seconds))
    return results


def _checks_table(rows: tuple[Row, ...]) -> list[str]:
    out = ["| # | kind | identity | residual | result |", "|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        verdict = "proved" if r.passed else "**FAILED**"
        out.append(f"| {i} | {r.kind} | {r.statement} | `{r.residual.replace('|', '¦')}` | {verdict} |")
    return out + [""]


def render_certificate(name: str, results: list[VariantResult]) -> str:
    """The whole certificate file for catalogue name ``name`` (deterministic)."""
    status = "PROVED" if all(r.passed for r in results) else "FAILED"
    total = sum(r.checks for r in results)
    out = [
        f"# Certificate: `{name}`",
        "",
        f"Status: **{status}** — {total} identities checked over {len(results)} construction(s).",
        f"Generated by `gaugemath prove` with SymPy {sp.__version__}; do not edit by hand "
        "(`gaugemath prove --check` fails on any difference).",
        "",
        "Every residual below is the exact simplification of *left side − right side*: `0` means the "
        "identity holds for all values of the symbols (generic parameters θ and a generic group element g "
        "in a rational parametrisation), unless the identity says it was checked at seeded random points.",
        "",
    ]
    for r in results:
        out += [f"## {r.variant}", "", f"*{r.summary}*", "", r.description, "**Checks**", ""]
        out += _checks_table(r.rows)
    return "\n".join(out)


def write_certificates(results: dict[str, list[VariantResult]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, res in results.items():
        p = out_dir / f"{name}.md"
        p.write_text(render_certificate(name, res), encoding="utf-8")
        paths.append(p)
    return paths


def stale_certificates(results: dict[str, list[VariantResult]], out_dir: Path) -> list[str]:
    """Names whose certificate file is missing or differs from the freshly derived text."""
    stale = []
    for name, res in results.items():
        p = out_dir / f"{name}.md"
        if not p.exists() or p.read_text(encoding="utf-8") != render_certificate(name, res):
            stale.append(name)
    return stale


__all__ = ["DEFAULT_DIR", "VariantResult", "prove_catalogue", "render_certificate", "stale_certificates",
           "write_certificates"]
