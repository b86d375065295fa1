"""RoPE plane-frame anchor switches with and without pivot hysteresis on the grokking demo (issue 19).

Runs the demo's DDCAdam (``gaugemath.experiments.grokking``, CPU preset) per seed with ``PIVOT_HOLD = 1``
(the plain argmax: a held column is kept only while it is the largest) and with the default, and prints per
run the steps on which some plane switched its anchor column, the total switches, loss spikes (the demo's
rule, per-step loss) and steps to grok::

    python bench/pivot_switches.py --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import statistics

import torch
from gaugemath.backends.torch import DDCAdam, orbits

from gaugemath.experiments import grokking


def run(seed: int, hold: float) -> dict:
    orbits.PIVOT_HOLD = hold
    seen = {"prev": None, "steps": 0, "switches": 0}
    original = DDCAdam.step

    def step(self, closure=None):
        out = original(self, closure)
        piv = [v.clone() for st in self.state.values() for k, v in sorted(st.items()) if k.startswith("pivot.")]
        if piv:
            cur = torch.cat(piv)
            if seen["prev"] is not None:
                n = int((cur != seen["prev"]).sum())
                seen["switches"] += n
                seen["steps"] += n > 0
            seen["prev"] = cur
        return out

    DDCAdam.step = step
    try:
        summary, _ = grokking.train_one(grokking.configure("cpu"), "ddcadam", seed)
    finally:
        DDCAdam.step = original
        orbits.PIVOT_HOLD = 4.0
    planes = 0 if seen["prev"] is None else seen["prev"].numel()
    return {"seed": seed, "hold": hold, "planes": planes, "steps_with_switch": seen["steps"],
            "switches": seen["switches"], "spikes": summary["spikes"], "grok": summary["steps_to_grok"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = ap.parse_args()
    rows = [run(s, h) for s in args.seeds for h in (1.0, 4.0)]
    print("| seed | PIVOT_HOLD | planes | steps with a switch | switches | spikes | steps to grok |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['hold']:g} | {r['planes']} | {r['steps_with_switch']} | {r['switches']} | "
              f"{r['spikes']} | {r['grok']} |")
    for h in (1.0, 4.0):
        sel = [r for r in rows if r["hold"] == h]
        sp = [r["spikes"] for r in sel]
        gk = [r["grok"] for r in sel if r["grok"] is not None]
        print(f"PIVOT_HOLD={h:g}: switches {statistics.fmean(r['switches'] for r in sel):.0f}/run, spikes "
              f"{statistics.fmean(sp):.1f} ± {statistics.stdev(sp) if len(sp) > 1 else 0:.1f}, grokked {len(gk)}/"
              f"{len(sel)}, steps to grok {statistics.fmean(gk) if gk else float('nan'):.0f}")


if __name__ == "__main__":
    main()
