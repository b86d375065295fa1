"""Benchmark: optimizer state memory, ``DDCAdam`` vs ``AdamW`` and ``DDCMuon`` vs ``Muon`` + ``AdamW``.

    python bench/memory.py [--device cpu|cuda] [--model cpu|gpt2|tiny] [--dtype float32|bfloat16]

What is measured, per optimizer, on its own copy of the model (``torch.manual_seed(0)``) with the
gradients of one forward/backward pass on a random batch:

* ``state``: bytes of every tensor in ``optimizer.state`` after 2 steps (any device): AdamW's
  two moments, DDC's moments, orbit scalars, step counters and shape records;
* on CUDA additionally ``peak``: ``torch.cuda.max_memory_allocated`` during the 2 steps minus the
  memory allocated before the first (model, gradients), i.e. state plus the step's transients;
* on any device, ``peak step memory / bound parameter bytes``: the most bytes a third ``DDCAdam`` step
  holds in tensors it created itself (work buffers, statistics, the all-or-nothing journal), counted
  by a ``TorchDispatchMode`` over every operator's outputs (:class:`TransientBytes`), over the bytes of
  the bound parameters (issue 18's target: ≤ 0.25).

Printed: absolute figures (MiB), the ratios ``DDCAdam/AdamW`` and ``DDCMuon/(Muon+AdamW)`` and the
device name. Target (issue 7): state ≤ AdamW's + 1 %. Hidden matrices for Muon are the 2-D
parameters inside ``blocks`` (as ``bench/step_time_muon.py``). The last lines, ``ratio ... = x.xxxx``,
are for grep.
"""

from __future__ import annotations

import argparse
import sys
import weakref
from collections.abc import Callable

import torch
from gaugemath.backends.torch import DDCAdam, DDCMuon, bind
from step_time import DTYPES, MODELS, clone_with_grads, device_name, prepared_model
from step_time_muon import _hidden, _rest
from torch.utils._python_dispatch import TorchDispatchMode

MiB = 2**20


def state_bytes(opts: list[torch.optim.Optimizer]) -> int:
    """Bytes of every tensor held in the optimizers' ``state`` (distinct storages counted once)."""
    seen, total = set(), 0
    for opt in opts:
        for st in opt.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
                    seen.add(v.untyped_storage().data_ptr())
                    total += v.untyped_storage().nbytes()
    return total


def measure(make: Callable[[torch.nn.Module], list[torch.optim.Optimizer]], reference: torch.nn.Module,
            device: torch.device, steps: int = 2) -> tuple[int, int | None]:
    """``(state bytes, CUDA peak bytes above the pre-step allocation or None)``."""
    model = clone_with_grads(reference)
    opts = make(model)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(steps):
        for o in opts:
            o.step()
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return state_bytes(opts), peak


class TransientBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created while the mode is active and still alive (any device).

    Every operator's outputs are looked at. A storage not seen before (and not one that existed when the
    mode started: parameters, gradients, state) is counted while any tensor on it that an operator
    returned is alive (views are outputs too; each tensor's ``weakref.finalize`` lowers its storage's
    count). In-place results reuse a counted or pre-existing storage, so this is what a step allocates on
    top of what it was given; temporaries inside one operator are not seen."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.live = self.peak = 0
        self._before = {t.untyped_storage().data_ptr() for t in existing if t.numel()}
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [live tensors, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if not (isinstance(t, torch.Tensor) and t.numel()):
                continue
            key = t.untyped_storage().data_ptr()
            if not key or key in self._before:
                continue
            ref = self._refs.get(key)
            if ref is None:
                ref = self._refs[key] = [0, t.untyped_storage().nbytes()]
                self.live += ref[1]
                self.peak = max(self.peak, self.live)
            ref[0] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        ref = self._refs.get(key)
        if ref is None:
            return
        ref[0] -= 1
        if ref[0] == 0:
            self.live -= ref[1]
            del self._refs[key]


def peak_step_bytes(make, reference: torch.nn.Module) -> tuple[int, int]:
    """``(transient peak of the 3rd step, bytes of the bound parameters)`` for a DDC optimizer (CPU, eager)."""
    model = clone_with_grads(reference)
    opts = make(model)
    for _ in range(2):
        for o in opts:
            o.step()
    existing = [t for p in model.parameters() for t in (p, p.grad) if t is not None]
    existing += [v for o in opts for st in o.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    mode = TransientBytes(existing)
    with mode:
        for o in opts:
            o.step()
    bound = {id(p) for o in opts for _, p in getattr(o, "binding", None).params} if opts else set()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) in bound)
    return mode.peak, nbytes


def optimizers(binding_of=bind) -> dict[str, Callable[[torch.nn.Module], list[torch.optim.Optimizer]]]:
    wd = 0.1
    return {
        "AdamW": lambda m: [torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=wd)],
        "DDCAdam": lambda m: [DDCAdam(m.parameters(), binding=binding_of(m), lr=1e-4, weight_decay=wd)],
        "Muon+AdamW": lambda m: [torch.optim.Muon(_hidden(m), lr=0.02, weight_decay=wd),
                                 torch.optim.AdamW(_rest(m), lr=3e-4, weight_decay=wd)],
        "DDCMuon": lambda m: [DDCMuon(m.parameters(), binding=binding_of(m), lr=0.02, adam_lr=3e-4,
                                      weight_decay=wd, muon_params=_hidden(m))],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", choices=tuple(MODELS), default=None)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=None)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    args.model = args.model or ("gpt2" if device.type == "cuda" else "cpu")
    args.seq = args.seq or (512 if device.type == "cuda" else 64)
    name, reference = prepared_model(args, device)
    n_params = sum(p.numel() for p in reference.parameters())
    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, model {name}: {n_params:,} parameters ({args.dtype}); "
          f"parameters {n_params * DTYPES[args.dtype].itemsize / MiB:.1f} MiB")
    results = {k: measure(make, reference, device) for k, make in optimizers().items()}
    print(f"\n{'optimizer':12s} {'state MiB':>10s} {'peak MiB (CUDA)':>16s}")
    for k, (state, peak) in results.items():
        print(f"{k:12s} {state / MiB:10.2f} {('n/a' if peak is None else f'{peak / MiB:.2f}'):>16s}")
    for ours, base in (("DDCAdam", "AdamW"), ("DDCMuon", "Muon+AdamW")):
        (s1, p1), (s0, p0) = results[ours], results[base]
        peak = f", peak {p1 / p0:.4f}" if p1 is not None and p0 else ""
        print(f"ratio {ours}/{base} state = {s1 / s0:.4f}{peak}")
    peak, bound = peak_step_bytes(optimizers()["DDCAdam"], reference)
    print(f"DDCAdam step transients: peak {peak / MiB:.2f} MiB, bound parameters {bound / MiB:.2f} MiB")
    print(f"peak step memory / bound parameter bytes = {peak / bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
