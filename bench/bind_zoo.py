"""bind() on third-party models: families, fraction bound, refusals, the fp64 protocol, bind time.

For every case of ``tests/third_party.py`` (transformers GPT-2 tied/untied, Llama, Mistral, Qwen2, ViT;
nanoGPT re-typed; ``nn.TransformerEncoderLayer``; an ``nn.Sequential`` classifier): the families
``bind`` finds, the fraction of parameter entries bound, the refusals (reason), the ddc.md protocol
deviation of DDCAdam and of AdamW over 8 fp64 steps where run B starts from the test's hand-written
``g·θ``, and the time of ``bind`` (trace + detect + fp64 check; median of 3).

    python bench/bind_zoo.py [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gaugemath.backends.torch import DDCAdam  # noqa: E402
from third_party import CASES, bind_case, protocol  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in CASES:
        model = case.make()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            binding = bind_case(case, model)
            times.append(time.perf_counter() - t)
        fams = ", ".join(f"{k}×{n}" for k, n in Counter(f.family.key for f in binding.families).items())
        frac = binding.bound_numel() / binding.model_numel
        refusals = "; ".join(sorted({f"{r.gauge}: {r.reason.split(' (at %')[0]}" for r in binding.refusals})) or "—"
        ddc = protocol(case, lambda m, c=case: DDCAdam(m.parameters(), binding=bind_case(c, m), lr=1e-2,
                                                        weight_decay=0.1))
        adamw = protocol(case, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1))
        rows.append((case.name, fams, f"{frac:.1%}", refusals, f"{ddc:.1e}", f"{adamw:.1e}",
                     f"{statistics.median(times):.2f} s"))
    head = ("model", "families found", "bound", "refusals (reason)", "DDCAdam dev (fp64)", "AdamW dev", "bind time")
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in rows:
            print("\n".join(f"{h:>20}: {v}" for h, v in zip(head, r)) + "\n")


if __name__ == "__main__":
    main()
