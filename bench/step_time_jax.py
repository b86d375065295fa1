"""Benchmark: jitted ``ddc_adam`` update vs jitted ``optax.adamw`` update, same parameters and gradients.

    python bench/step_time_jax.py [--model cpu|gpt2|tiny] [--steps N] [--warmup N] [--x64]

The parameters are the torch reference model's (``gpt_small_cpu()`` by default, ``torch.manual_seed(0)``)
as a flat dict of JAX arrays keyed by the torch names, bound with the torch detector's gauge specs;
the gradients are fixed random normals. Measured: ``update`` + ``optax.apply_updates`` in one jitted
function, ``block_until_ready`` after each call; the median ms over ``--steps`` calls after
``--warmup`` (compilation excluded). ``--x64`` enables ``jax_enable_x64``, which gives ddc_adam its
fp64 canonical path (as the torch backend's default); without it the canonical path is fp32.
The last line, ``ratio ddc_adam/optax.adamw = x.xx``, is for grep.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cpu", choices=["cpu", "gpt2", "tiny"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--x64", action="store_true")
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_x64", args.x64)
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from gaugemath.backends import jax as gj
    from gaugemath.backends.torch import detect

    from gaugemath.models import gpt2_small, gpt_small_cpu, tiny_gpt

    torch.manual_seed(0)
    model = {"cpu": gpt_small_cpu, "gpt2": gpt2_small, "tiny": tiny_gpt}[args.model]()
    specs = detect(model)
    params = {n: jnp.asarray(p.detach().numpy(), jnp.float32) for n, p in model.named_parameters()}
    del model
    rng = np.random.default_rng(0)
    grads = {n: jnp.asarray(rng.normal(size=p.shape) * 1e-3, jnp.float32) for n, p in params.items()}
    binding = gj.bind(params, specs, check=False)  # specs of the torch twin, checked there
    n_params = sum(int(p.size) for p in params.values())
    print(f"device: {jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}, "
          f"x64={'on' if args.x64 else 'off'}")
    print(f"model {args.model}: {n_params:,} parameters; {len(binding.paths)} bound leaves, "
          f"{len(binding.families)} orbit families")

    results = {}
    for name, tx in [("optax.adamw", optax.adamw(1e-4, weight_decay=0.1)),
                     ("ddc_adam", gj.ddc_adam(1e-4, weight_decay=0.1, gauges=binding))]:
        state = tx.init(params)

        @jax.jit
        def step(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, s = params, state
        for _ in range(args.warmup):
            p, s = step(p, s, grads)
        jax.block_until_ready(p)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            p, s = step(p, s, grads)
            jax.block_until_ready(p)
            times.append(1e3 * (time.perf_counter() - t0))
        results[name] = statistics.median(times)
        q = statistics.quantiles(times, n=4)
        print(f"{name:12s} median {results[name]:9.2f} ms   IQR [{q[0]:.2f}, {q[2]:.2f}]")
    print(f"ratio ddc_adam/optax.adamw = {results['ddc_adam'] / results['optax.adamw']:.2f}")


if __name__ == "__main__":
    main()
