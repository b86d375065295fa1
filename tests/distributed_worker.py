"""Run by tests/test_distributed.py: DDCAdam on a bound model under DDP or FSDP2 with 2 gloo processes on
CPU, against the same steps in one process.

    python tests/distributed_worker.py {ddp,fsdp} {tiny_gpt,nanogpt} PORT OUT

Every rank gets the same batches, so the averaged gradient is the single-process gradient and the
parameters must be equal bit for bit. Writes ``torch.save((kind, payload), OUT)`` from rank 0: ``("ok",
max |θ_distributed − θ_single|)`` or ``("err", traceback)``.
"""

from __future__ import annotations

import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

STEPS = 3


def _model(which: str):
    """``(model, binding, loss(model, t))``: ours, or the re-typed nanoGPT of tests/third_party.py."""
    from gaugemath.backends.torch import bind

    if which == "tiny_gpt":
        from gaugemath.models import tiny_gpt

        torch.manual_seed(0)
        m = tiny_gpt()

        def loss(model, t):
            idx = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(t))
            return model.loss(idx[:, :-1], idx[:, 1:])

        return m, bind(m), loss
    from third_party import CASES, bind_case

    case = next(c for c in CASES if c.name == "nanoGPT (explicit softmax)")
    m = case.make()

    def loss(model, t):
        args, kwargs = case.batch(100 + t)
        return case.loss(model, args, kwargs)

    return m, bind_case(case, m), loss


def _train(model, binding, loss) -> dict[str, torch.Tensor]:
    from gaugemath.backends.torch import DDCAdam

    opt = DDCAdam(model.parameters(), binding=binding, lr=1e-2, weight_decay=0.1)
    for t in range(STEPS):
        opt.zero_grad()
        loss(model, t).backward()
        opt.step()
    out = {}
    for n, p in model.named_parameters():
        t = p.detach()
        out[n.removeprefix("module.")] = (t.full_tensor() if hasattr(t, "full_tensor") else t).clone()
    return out


def _worker(rank: int, mode: str, which: str, port: int, path: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        want = _train(*_model(which)) if rank == 0 else None  # the single-process run, before any collective
        dist.barrier()
        model, binding, loss = _model(which)
        if mode == "ddp":
            got = _train(nn.parallel.DistributedDataParallel(model), binding, lambda m, t: loss(_Forward(m), t))
        else:
            from torch.distributed.fsdp import fully_shard

            for lst in [mod for mod in model.modules() if isinstance(mod, nn.ModuleList)]:
                for block in lst:
                    fully_shard(block)
            fully_shard(model)
            from gaugemath.backends.torch import bind

            from gaugemath.errors import GaugeError

            try:  # a sharded model cannot be traced: bind() says what to do instead
                bind(model)
                raise AssertionError("bind() accepted DTensor parameters")
            except GaugeError as e:
                assert "bind the model before sharding it, then take binding.rebind(model)" in str(e), e
            got = _train(model, binding.rebind(model), loss)
        if rank == 0:
            torch.save(("ok", max(float((got[n] - want[n]).abs().max()) for n in want)), path)
    except Exception:
        if rank == 0:
            torch.save(("err", traceback.format_exc()), path)
    finally:  # both ranks done with every collective before either tears the group down
        dist.barrier()
        dist.destroy_process_group()


class _Forward:
    """``model.loss(...)`` / ``model(...)`` through a DDP wrapper's ``forward`` (which its all-reduce needs)."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def __call__(self, *args, **kwargs):
        return self.wrapped(*args, **kwargs)

    def loss(self, idx, targets):
        logits = self.wrapped(idx)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


if __name__ == "__main__":
    mode, which, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    mp.start_processes(_worker, args=(mode, which, port, path), nprocs=2, start_method="spawn")
