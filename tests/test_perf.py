"""Performance-related behaviour that must not change results: ``torch.compile`` of the step."""

from __future__ import annotations

import copy

import pytest
import torch
from gaugemath.backends.torch import DDCAdam, bind

from gaugemath.models import tiny_gpt


@pytest.mark.slow
def test_torch_compile_of_the_step_gives_the_eager_results():
    """``torch.compile(opt.step)`` (graph breaks at the host syncs) equals the eager step to 1e-6."""
    torch.manual_seed(0)
    ma = tiny_gpt()
    mb = copy.deepcopy(ma)
    oa = DDCAdam(ma.parameters(), binding=bind(ma), lr=1e-2)
    ob = DDCAdam(mb.parameters(), binding=bind(mb), lr=1e-2)
    compiled = torch.compile(ob.step)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        idx = torch.randint(0, 11, (2, 7), generator=gen)
        for m, o, step in ((ma, oa, oa.step), (mb, ob, compiled)):
            o.zero_grad()
            m.loss(idx[:, :-1], idx[:, 1:]).backward()
            step()
        num = sum(float((p - q).double().pow(2).sum()) for p, q in zip(ma.parameters(), mb.parameters()))
        den = sum(float(p.double().pow(2).sum()) for p in ma.parameters())
        assert (num / den) ** 0.5 < 1e-6
