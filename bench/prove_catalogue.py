"""Benchmark: wall time to prove the whole catalogue, serial and with one worker per core.

    python bench/prove_catalogue.py

Prints the per-construction CPU seconds and the wall time for 1 and N worker processes.
"""

from __future__ import annotations

import os
import time

from gaugemath.certificates import prove_catalogue


def main() -> None:
    cores = os.cpu_count() or 1
    for procs in sorted({1, cores}):
        t0 = time.perf_counter()
        results = prove_catalogue(processes=procs)
        wall = time.perf_counter() - t0
        cpu = sum(r.seconds for res in results.values() for r in res)
        ok = all(r.passed for res in results.values() for r in res)
        print(f"processes={procs}: wall {wall:6.1f} s, summed check time {cpu:6.1f} s, all proved: {ok}")
        if procs == 1:
            for res in results.values():
                for r in res:
                    print(f"    {r.name:18s} {r.variant:22s} {r.seconds:6.1f} s")


if __name__ == "__main__":
    main()
