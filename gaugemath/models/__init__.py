"""Reference neural-network models for the gauge binder (PyTorch).

The models live in :mod:`gaugemath.models.torch_models`; this package imports it (and torch)
only when one of the names below is first accessed, so ``import gaugemath.models`` is cheap
and works without torch installed.

>>> from gaugemath.models import tiny_gpt  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .torch_models import (
        GPT,
        MLP,
        Attention,
        Block,
        ReluMLP,
        RotaryEmbedding,
        SwiGLU,
        ViT,
        gpt2_small,
        gpt_small_cpu,
        tiny_gpt,
    )

__all__ = [
    "GPT",
    "MLP",
    "Attention",
    "Block",
    "ReluMLP",
    "RotaryEmbedding",
    "SwiGLU",
    "ViT",
    "gpt2_small",
    "gpt_small_cpu",
    "tiny_gpt",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import torch_models

        return getattr(torch_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
