"""DDCAdam under DDP and FSDP2 (``fully_shard``, DTensor parameters), 2 gloo processes on CPU.

Each case runs ``tests/distributed_worker.py`` in a subprocess (spawned ranks need an importable entry
point): every rank takes the same batches, so the averaged gradients are the single-process ones and the
parameters after 3 steps must equal the single-process run **bit for bit** (FSDP2: the bound part of the
step runs on gathered full tensors, :meth:`DDCAdam._ddc_sharded`; the free part is torch's foreach AdamW
on DTensors). Models: ours (``tiny_gpt``: SwiGLU, RMSNorm, RoPE) and the re-typed nanoGPT of
tests/third_party.py (LayerNorm, GELU, fused QKV with head rotations).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# By default each wrapper runs on one model (FSDP2 on the third-party nanoGPT, DDP on tiny_gpt); the other
# two pairings (12-15 s each on the 2-core CI box) run with -m slow.
@pytest.mark.parametrize("mode, which", [
    ("ddp", "tiny_gpt"),
    ("fsdp", "nanogpt"),
    pytest.param("ddp", "nanogpt", marks=pytest.mark.slow),
    pytest.param("fsdp", "tiny_gpt", marks=pytest.mark.slow),
])
def test_distributed_step_equals_the_single_process_step(mode, which, tmp_path):
    out = tmp_path / "out.pt"
    run = subprocess.run([sys.executable, WORKER, mode, which, str(_free_port()), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert out.exists(), run.stderr[-3000:]
    kind, payload = torch.load(out)
    assert kind == "ok", payload
    assert payload == 0.0, (mode, which, payload)


def test_rebind_takes_the_same_names_and_names_what_does_not_match():
    """``Binding.rebind`` (after FSDP2 replaced the parameter objects) maps names to the model's current
    parameters and names a missing or reshaped one. (``bind()`` on DTensor parameters refusing with that
    remedy is checked inside the FSDP2 worker, which has a process group.)"""
    from gaugemath.backends.torch import bind
    from torch import nn

    from gaugemath.errors import GaugeError
    from gaugemath.models import tiny_gpt

    model = tiny_gpt()
    binding = bind(model)
    other = tiny_gpt()
    assert [p for _, p in binding.rebind(other).params] == [dict(other.named_parameters())[n] for n, _ in
                                                           binding.params]
    other.blocks[0].mlp.up.weight = nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(GaugeError, match=r"blocks.0.mlp.up.weight.*\(3, 3\)"):
        binding.rebind(other)
    del other.blocks[0].mlp.up.weight
    with pytest.raises(GaugeError, match="blocks.0.mlp.up.weight.*not a parameter of this model"):
        binding.rebind(other)
