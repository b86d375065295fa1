"""Benchmark: wall time of one optimizer step, ``DDCAdam`` vs ``torch.optim.AdamW`` (foreach and fused).

    python bench/step_time.py [--device cpu|cuda] [--model cpu|gpt2|tiny] [--steps N] [--warmup N]
                              [--dtype float32|bfloat16] [--canonical-dtype float32|float64] [--profile]
                              [--batch B] [--seq T] [--threads N] [--max-seconds S] [--compile]
                              [--compile-mode default|reduce-overhead|max-autotune] [--nonfinite raise|skip|unchecked]
                              [--kernels auto|triton|reference] [--frames balanced|per_family] [--kinds K,K]

What is measured: ``optimizer.step()`` only. The model (``gpt_small_cpu()`` on CPU, ``gpt2_small()``
on CUDA by default; ``torch.manual_seed(0)``) is built once, one batch of random token ids
(8×64 on CPU, 8×512 on CUDA) is run forward and backward once, and the gradients are kept in
place. Each optimizer gets its own deep copy of the model with the same ``.grad`` copied in, so
steps of one optimizer never touch another's parameters:

* ``AdamW(foreach)``: ``torch.optim.AdamW(foreach=True)``;
* ``AdamW(fused)``: ``torch.optim.AdamW(fused=True)``, skipped (reported unavailable) where it
  does not construct or step on the device/dtype;
* ``DDCAdam``: ``gaugemath.backends.torch.DDCAdam`` with ``binding=bind(model_copy)``;
* ``DDCAdam(fused)``: the same with ``fused=True`` (the free parameters on torch's fused AdamW kernel, as
  ``AdamW(fused)``); the ``vs fused`` ratio line compares it with ``AdamW(fused)``, like with like;
* ``DDCAdam(compiled)`` (with ``--compile``): the same, stepped through ``torch.compile(opt.step,
  mode=--compile-mode)`` (Inductor; ``reduce-overhead`` adds CUDA graphs, which want
  ``--nonfinite unchecked``: no host sync, one graph); its first call (the compilation) is untimed
  and reported in seconds.

All use ``lr=1e-4``, ``weight_decay=0.1``, default betas/eps. After ``--warmup`` steps (state
allocated, caches warm), ``--steps`` rounds are timed, each one step of every optimizer in turn, with
``time.perf_counter`` (``torch.cuda.synchronize()`` before and after each step on CUDA; timing stops
early after ``--max-seconds`` of the slowest optimizer's timed steps, at least 3 rounds). ``--kinds`` picks
the optimizers timed per round (``AdamW(foreach)`` always): two, e.g. ``--kinds "AdamW(foreach),DDCAdam"``, give
a steadier ratio on a shared box than four, whose models and states compete for cache. Interleaving keeps a change in
the machine's load from reaching one optimizer only. Reported: the median ms/step, the interquartile
range, and the ratios against the two AdamW variants. The last lines, ``ratio DDCAdam/AdamW(foreach) =
x.xx`` (``DDCAdam`` over ``AdamW(foreach)``) and ``ratio DDCAdam/AdamW(fused) = y.yy`` (``DDCAdam(fused)``
over ``AdamW(fused)`` since 2026-12-02, when the ``fused`` option was added; before, ``DDCAdam`` over
``AdamW(fused)``; both where the fused kernels run: the median over rounds of the ratio within a round), and
with ``--compile`` ``ratio compiled DDCAdam/AdamW(fused) = z.zz`` (the compiled step's free parameters take
the foreach form), are meant for ``grep``.
``--profile`` additionally runs ``torch.profiler`` over 5 ``DDCAdam`` steps and prints
the top operators by self time.

CPU timings are sensitive to other load on the machine: with torch's intra-op threads competing
for cores, a step can slow down by an order of magnitude. The header prints the load average;
compare runs only on an otherwise idle machine (or pin ``--threads``).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from gaugemath.backends.torch import DDCAdam, bind
from torch import nn

from gaugemath.models import gpt2_small, gpt_small_cpu, tiny_gpt

LR = 1e-4
WEIGHT_DECAY = 0.1
#: the optimizers timed, in round order
KINDS = ("AdamW(foreach)", "AdamW(fused)", "DDCAdam", "DDCAdam(fused)")
#: optimizers on torch's fused AdamW kernel: reported unavailable where it does not run
FUSED_KINDS = ("AdamW(fused)", "DDCAdam(fused)")
MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "cpu": ("gpt_small_cpu", gpt_small_cpu),
    "gpt2": ("gpt2_small", gpt2_small),
    "tiny": ("tiny_gpt", tiny_gpt),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class Result:
    """Timings of one optimizer (``times_ms`` empty when it was unavailable)."""

    name: str
    times_ms: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def iqr(self) -> tuple[float, float]:
        if len(self.times_ms) < 2:
            return self.median, self.median
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q1, q3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", choices=tuple(MODELS), default=None,
                    help="default: cpu (gpt_small_cpu) on CPU, gpt2 (gpt2_small) on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CPU, 100 on CUDA)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter dtype")
    ap.add_argument("--canonical-dtype", choices=("float32", "float64"), default=None,
                    help="DDCAdam canonical_dtype (default: the library's, the parameters' precision)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default: 64 on CPU, 512 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="stop timing one optimizer after this many seconds (at least 3 timed steps; default 60)")
    ap.add_argument("--profile", action="store_true", help="profile 5 DDCAdam steps and print the top operators")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(DDCAdam.step)")
    ap.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                    help="torch.compile mode for --compile")
    ap.add_argument("--nonfinite", default="raise", choices=("raise", "skip", "unchecked"),
                    help="DDCAdam nonfinite (unchecked: no host sync per step)")
    ap.add_argument("--frames", default="balanced", choices=("balanced", "per_family"),
                    help="the binding's canonical points (bind(..., frames=...))")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help="comma-separated optimizers to time per round (fewer: less memory traffic between them, a "
                         "steadier ratio on a shared box; e.g. AdamW(foreach),DDCAdam); AdamW(foreach) is always timed")
    ap.add_argument("--kernels", default="auto", choices=("auto", "triton", "reference"),
                    help="DDCAdam kernel path (auto: Triton on CUDA; reference: torch ops, which --compile fuses)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.model = args.model or ("gpt2" if cuda else "cpu")
    args.steps = args.steps if args.steps is not None else (100 if cuda else 20)
    args.seq = args.seq if args.seq is not None else (512 if cuda else 64)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := [k for k in kinds if k not in KINDS]:
        ap.error(f"--kinds: unknown {unknown}; choose from {list(KINDS)}")
    args.kinds = tuple(k for k in KINDS if k in kinds or k == "AdamW(foreach)")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return f"{cpu} ({platform.machine()}), {torch.get_num_threads()} threads, {os.cpu_count()} cores{load}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepared_model(args: argparse.Namespace, device: torch.device) -> tuple[str, nn.Module]:
    """The model with ``.grad`` set from one forward/backward pass on a random batch."""
    name, make = MODELS[args.model]
    torch.manual_seed(0)
    model = make().to(device=device, dtype=DTYPES[args.dtype])
    idx = torch.randint(0, model.vocab, (args.batch, args.seq + 1), device=device)
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    sync(device)
    return name, model


def clone_with_grads(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters carry copies of ``model``'s gradients."""
    twin = copy.deepcopy(model)
    for (n, p), (m, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert n == m
        q.grad = None if p.grad is None else p.grad.detach().clone()
    return twin


def time_steps(step: Callable[[], object], steps: int, warmup: int, device: torch.device,
               max_seconds: float = float("inf")) -> list[float]:
    """Milliseconds of each of ``steps`` timed calls of ``step`` after ``warmup`` untimed ones.

    Timing stops early once ``max_seconds`` have been spent on the timed steps (but not before 3).
    """
    for _ in range(warmup):
        step()
    sync(device)
    times: list[float] = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 3 and sum(times) > max_seconds * 1e3:
            break
    return times


def make_optimizer(kind: str, model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if kind == "AdamW(foreach)":
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True)
    if kind == "AdamW(fused)":
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    canonical = None if args.canonical_dtype is None else DTYPES[args.canonical_dtype]
    return DDCAdam(params, binding=bind(model, frames=args.frames), lr=LR, weight_decay=WEIGHT_DECAY,
                   canonical_dtype=canonical, nonfinite=args.nonfinite, kernels=args.kernels,
                   **({"fused": True} if kind == "DDCAdam(fused)" else {}))


def bench_compiled(reference: nn.Module, args: argparse.Namespace, device: torch.device) -> Result:
    """``torch.compile(DDCAdam.step)``: the compilation (first call) untimed, reported in seconds."""
    model = clone_with_grads(reference)
    opt = make_optimizer("DDCAdam", model, args)
    step = torch.compile(opt.step, mode=None if args.compile_mode == "default" else args.compile_mode)
    t0 = time.perf_counter()
    step()
    sync(device)
    compile_s = time.perf_counter() - t0
    times = time_steps(step, args.steps, args.warmup, device, args.max_seconds)
    return Result("DDCAdam(compiled)", times, note=f"first call (compilation) {compile_s:.0f} s")


def prepare(kind: str, reference: nn.Module, args: argparse.Namespace, device: torch.device):
    """``(optimizer.step, note)`` on its own copy of the model, or ``(None, reason)`` where fused AdamW is
    unavailable on this device/dtype."""
    model = clone_with_grads(reference)
    try:
        opt = make_optimizer(kind, model, args)
        if kind in FUSED_KINDS:
            opt.step()  # fused support is only fully known once a step has run on this device/dtype
            sync(device)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        if kind not in FUSED_KINDS:
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{kind}: unavailable ({reason})")
        return None, reason
    return opt.step, ""


def bench_interleaved(kinds: tuple[str, ...], reference: nn.Module, args: argparse.Namespace,
                      device: torch.device) -> dict[str, Result]:
    """Time the optimizers in rounds, one step of each per round, so that a change in the machine's load
    (this box is shared) reaches every optimizer alike and the per-round ratios stay comparable."""
    steps, results = {}, {}
    for kind in kinds:
        step, note = prepare(kind, reference, args, device)
        if step is None:
            results[kind] = Result(kind, [], note=note)
        else:
            steps[kind] = step
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    sync(device)
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    for _ in range(args.steps):
        for kind, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times[kind].append((time.perf_counter() - t0) * 1e3)
        slowest = max(times.values(), key=sum)
        if len(slowest) >= 3 and sum(slowest) > args.max_seconds * 1e3:
            break
    for kind, ts in times.items():
        results[kind] = Result(kind, ts, note="" if len(ts) == args.steps else f"{len(ts)} steps (--max-seconds)")
    return {kind: results[kind] for kind in kinds}


def round_ratio(a: Result, b: Result) -> float:
    """The median over rounds of ``a``'s step time over ``b``'s in the same round."""
    return statistics.median(x / y for x, y in zip(a.times_ms, b.times_ms))


def profile_ddc(reference: nn.Module, args: argparse.Namespace, device: torch.device, steps: int = 5) -> None:
    """``torch.profiler`` over ``steps`` DDCAdam steps (after 2 untimed ones): where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    model = clone_with_grads(reference)
    opt = make_optimizer("DDCAdam", model, args)
    for _ in range(2):
        opt.step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            opt.step()  # recorded as "Optimizer.step#DDCAdam.step"; its self time is Python overhead
        sync(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile: {steps} DDCAdam steps, sorted by {sort}")
    print(prof.key_averages().table(sort_by=sort, row_limit=25))


def ratio(a: Result, b: Result) -> str:
    return f"{a.median / b.median:.2f}" if a.times_ms and b.times_ms else "n/a"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name, reference = prepared_model(args, device)
    binding = bind(reference, frames=args.frames)
    n_params = sum(p.numel() for p in reference.parameters())
    n_bound = sum(p.numel() for _, p in binding.params)
    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, model {name}: {n_params:,} parameters ({args.dtype}), "
          f"batch {args.batch}x{args.seq}")
    print(f"binding: {len(binding.params)} bound parameters ({n_bound:,} elements), "
          f"{len(binding.families)} orbit families, frames={args.frames}; DDCAdam "
          f"canonical_dtype={args.canonical_dtype or 'default'}, "
          f"nonfinite={args.nonfinite}, kernels={args.kernels}"
          + (f"; compile mode {args.compile_mode}" if args.compile else ""))
    print(f"lr={LR}, weight_decay={WEIGHT_DECAY}; {args.warmup} warmup + {args.steps} timed steps each")
    del binding

    results = bench_interleaved(args.kinds, reference, args, device)
    if args.compile:
        results["DDCAdam(compiled)"] = bench_compiled(reference, args, device)
    none = Result("", [])
    foreach, fused = results["AdamW(foreach)"], results.get("AdamW(fused)", none)
    print(f"\n{'optimizer':18s} {'median ms':>10s} {'IQR ms':>22s} {'vs foreach':>11s} {'vs fused':>9s}")
    for r in results.values():
        if not r.times_ms:
            print(f"{r.name:18s} {'unavailable':>10s}")
            continue
        q1, q3 = r.iqr
        print(f"{r.name:18s} {r.median:10.2f} {f'[{q1:.2f}, {q3:.2f}]':>22s} {ratio(r, foreach):>11s} "
              f"{ratio(r, fused):>9s}  {r.note}".rstrip())

    if args.profile:
        profile_ddc(reference, args, device)
    print()  # one line each, for grep (issue 18's targets: eager ≤ 2.0× foreach, compiled ≤ 3.0× fused)
    ddc = results.get("DDCAdam", none)
    if ddc.times_ms:
        print(f"ratio DDCAdam/AdamW(foreach) = {round_ratio(ddc, foreach):.2f}")
    if fused.times_ms and results.get("DDCAdam(fused)", none).times_ms:  # like with like: free parameters fused
        print(f"ratio DDCAdam/AdamW(fused) = {round_ratio(results['DDCAdam(fused)'], fused):.2f}")
    if args.compile and results["DDCAdam(compiled)"].times_ms:
        base = fused if fused.times_ms else foreach
        print(f"ratio compiled DDCAdam/{base.name} = {results['DDCAdam(compiled)'].median / base.median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
