"""Worker for tests/test_jax_sharding.py: ``ddc_adam`` under ``jax.sharding`` on a mesh of 2 host CPU devices.

Run as ``python tests/jax_sharding_worker.py MODEL DTYPE OUT`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` set before JAX starts (the test sets it). The parameters
of a torch reference model (``tiny_gpt`` or the re-typed nanoGPT of tests/third_party.py) are bound by the torch
detector's specs; 3 jitted steps run twice from the same state and the same fixed gradients: once on one device,
once with every parameter, gradient and state leaf whose first axis is even sharded over the mesh along that axis
(FSDP-style ``NamedSharding(mesh, P("x"))``, the rest replicated). Written to OUT (``numpy.savez``): the largest
difference of the parameters of the two runs relative to the largest entry, and how many leaves were sharded on
the way in and came out sharded.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def main(model_name: str, dtype: str, out: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from gaugemath.backends import jax as gj
    from gaugemath.backends.torch import detect
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert len(jax.devices()) == 2, jax.devices()
    torch.manual_seed(0)
    if model_name == "tiny_gpt":
        from gaugemath.models import tiny_gpt

        model = tiny_gpt()
    else:
        import third_party

        case = next(c for c in third_party.CASES if c.name == model_name)
        model = case.make()
    if model_name == "tiny_gpt":
        specs = detect(model)
    else:
        args, kwargs = third_party.example(case)
        specs = detect(model, example=kwargs if not args else args if not kwargs else None, **case.bind_kwargs)
    jd = {"float32": jnp.float32, "float64": jnp.float64}[dtype]
    params = {n: jnp.asarray(p.detach().double().numpy(), jd) for n, p in model.named_parameters()}
    rng = np.random.default_rng(0)
    grads = [{n: jnp.asarray(rng.normal(size=p.shape) * 1e-2, jd) for n, p in params.items()} for _ in range(3)]
    tx = gj.ddc_adam(1e-2, weight_decay=0.1, gauges=gj.bind(params, specs, check=False))

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    def run(place):
        p, s = place(params), place(tx.init(params))
        for g in grads:
            p, s = step(p, s, place(g))
        return p

    single = run(lambda tree: jax.device_put(tree, jax.devices()[0]))
    mesh = Mesh(np.array(jax.devices()), ("x",))

    def shard(tree):
        def one(x):
            spec = P("x") if getattr(x, "ndim", 0) >= 1 and x.shape[0] % 2 == 0 else P()
            return jax.device_put(x, NamedSharding(mesh, spec))
        return jax.tree_util.tree_map(one, tree)

    sharded = run(shard)
    sharded_in = sum(1 for x in jax.tree_util.tree_leaves(shard(params)) if not x.sharding.is_fully_replicated)
    sharded_out = sum(1 for x in jax.tree_util.tree_leaves(sharded) if not x.sharding.is_fully_replicated)
    a = {n: np.asarray(x) for n, x in single.items()}  # (gathered to the host)
    b = {n: np.asarray(x) for n, x in sharded.items()}
    num = max(float(np.max(np.abs(a[n] - b[n]))) for n in params)
    den = max(float(np.max(np.abs(a[n]))) for n in params)
    np.savez(out, rel=num / den, sharded_in=sharded_in, sharded_out=sharded_out, leaves=len(params))


if __name__ == "__main__":
    main(*sys.argv[1:4])
