"""Reference neural-network models for the gauge binder (PyTorch and JAX).

The PyTorch models live in :mod:`gaugemath.models.torch_models`, their JAX counterparts (plain
functions over flat parameter dicts keyed by the torch parameter names) in
:mod:`gaugemath.models.jax_models`. This package imports either module (and torch or jax) only
when one of its names is first accessed, so ``import gaugemath.models`` is cheap and works
without torch or jax installed.

>>> from gaugemath.models import tiny_gpt  # doctest: +SKIP
>>> from gaugemath.models import GPTConfig, gpt_apply  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .jax_models import (
        GPTConfig,
        from_torch,
        gpt_apply,
        gpt_config_of,
        gpt_gauge_specs,
        gpt_loss,
        init_gpt,
        mlp_apply,
        mlp_gauge_specs,
        mlp_init,
    )
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
    # torch_models
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
    # jax_models
    "GPTConfig",
    "from_torch",
    "gpt_apply",
    "gpt_config_of",
    "gpt_gauge_specs",
    "gpt_loss",
    "init_gpt",
    "mlp_apply",
    "mlp_gauge_specs",
    "mlp_init",
]
_JAX = frozenset(__all__[__all__.index("GPTConfig"):])


def __getattr__(name: str) -> Any:
    if name in _JAX:
        from . import jax_models

        return getattr(jax_models, name)
    if name in __all__:
        from . import torch_models

        return getattr(torch_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
