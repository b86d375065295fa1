"""``DDCAdam``: AdamW lifted to a gauge-equivariant optimizer (``../shared/spec/ddc.md`` §3).

One step on the gauge-bound tensors, in the canonical dtype (``canonical_dtype``: by default the
parameters' precision, fp32 for fp32 and bf16 parameters; Adam moments in the parameter dtype, fp32
for bf16 parameters):

1. ``θ̃ = h(θ)·θ`` and ``g̃ = D(h)^{-T} g``, family by family in binding order (a unit whose frame is
   undefined, :meth:`~.orbits.BoundFamily.degenerate`, takes the identity and no vertical space; the composed
   canonical frame proved in ``proofs/transformer_block.md``); in eager mode on the reference
   path, families repeated over layers run as one batch (:mod:`.batching`: the order of families
   that share a tensor is kept, so the frame is the same).
2. ``Γ`` at ``θ̃`` is factored once; ``c_g = Γ⁻¹Xᵀg̃``, ``g̃_H = g̃ − X c_g``. A vertical
   coordinate ``(Xᵀg̃)_k`` below its noise floor (``vertical_rtol``) is set to exactly zero: for a
   gauge-invariant loss it *is* zero, and subtracting round-off ``X c`` would put noise on
   coordinates whose gradient is exactly zero, which Adam then normalises into unit steps.
3. Adam moments of ``g̃_H`` are kept per coordinate in the canonical frame (they are invariant);
   ``u = m̂ / (√v̂ + ε)``.
4. ``Δθ̃ = −lr [P_H u + λ P_H θ̃ + X a]`` with the vertical coefficients ``a``:
   ``freeze`` (default): ``a = 0``; ``sgd``: ``a = c_g + λ c_θ``; ``adam``: scalar Adam moments
   per orbit coordinate on ``ĉ = c_g ‖X_k‖`` (normalised generators), ``a = m̂/(√v̂ + ε_V)/‖X_k‖ + λ c_θ``.
5. ``θ ← θ + D(h)⁻¹Δθ̃``: the step mapped back as a tangent vector (the inverse frames' linear parts in
   reverse order; a translation's is the identity) and added to ``θ`` itself, which equals
   ``h(θ)⁻¹·(θ̃ + Δθ̃)`` for these affine actions but rounds ``θ`` once instead of in every stage.

If ``θ_B = g·θ_A`` and ``g_B = D(g)^{-T} g_A`` then ``θ̃_B = θ̃_A`` and ``g̃_B = g̃_A``: the whole
canonical step is identical and ``θ_B' = g·θ_A'`` (exact equivariance up to round-off).

Vertical ``adam`` normalises whatever reaches the vertical channel. For a gauge-invariant loss
that is round-off (the pitfall measured in ddc.md §3), so it is opt-in and ``freeze`` is the
default; ``vertical_eps`` sets the floor of its denominator.

Tensors bound to no gauge take exactly ``torch.optim.AdamW``'s update (same formula, same
operation order), so ``DDCAdam`` with an empty binding *is* AdamW.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from gaugemath.errors import GaugeError

from .._balance import balanced_order
from .._spec import entry_shape
from . import batching
from .balance import JointBalance, canonicalise
from .batching import Batch, Layout
from .binding import Binding, _is_dtensor, entries, reindexed, restrict, stored, work_copies, work_view
from .kernels import KERNELS, KernelFamily, adam_directions, select
from .projection import Projector

#: id(parameter) → (weak parameter, weak DDC optimizer that steps it): a discarded optimizer releases it
_HOLDERS: dict[int, tuple] = {}

VERTICAL = ("freeze", "sgd", "adam")
FRAMES = ("canonical", "lognorm")
NONFINITE = ("raise", "skip", "unchecked")
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class DDCAdam(torch.optim.Optimizer):
    """Dead-Direction Conditioner on an AdamW base.

    Args:
        params: parameters or param groups (as for ``torch.optim.AdamW``).
        binding: a :class:`~gaugemath.backends.torch.Binding` from :func:`bind`; ``None`` binds
            nothing (then this is AdamW).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled decay, here applied in
            the canonical frame for bound tensors).
        vertical: ``"freeze"`` | ``"sgd"`` | ``"adam"`` (what the orbit directions do).
        vertical_eps: denominator floor of the vertical Adam channel (default: ``eps``).
        vertical_rtol: a vertical gradient coordinate ``(Xᵀg̃)_k`` below ``vertical_rtol · (|X|ᵀ|g̃|)_k``
            is treated as exactly zero (default ``√ε`` of the parameter dtype: the resolution of a
            backward pass; ``0`` keeps only the dot-product rounding bound).
        canonical_dtype: dtype of the canonical-frame computation (frames, ``θ̃``, ``g̃``,
            projections, the step ``Δθ``); Adam moments stay in the parameter dtype (fp32 for bf16).
            Default: the parameters' precision (fp64 for fp64 parameters, else fp32). Because the step is
            added to ``θ`` in parameter coordinates (step 5), the work dtype's rounding reaches only
            ``Δθ``: the fp32 protocol measures 2.0–4.6e-7 with fp32 buffers and 2.1–3.5e-7 with fp64 ones
            (docs/backends/torch.md). Coupled Schur complements are formed in fp64 either way.
        nonfinite: what a step with a non-finite gradient does: ``"raise"`` (default) a
            :class:`~gaugemath.GaugeError` naming the parameter and gauge, or ``"skip"`` the step,
            leaving parameters and state untouched. Either way the check is one host sync per
            step (one fused all-finite reduction); it is the only sync in ``step`` except the
            update check of ``"raise"`` on bound tensors. ``"unchecked"``: no check and
            no sync, as ``torch.optim.AdamW`` (a non-finite gradient then makes non-finite
            parameters); the step is then one graph for
            ``torch.compile(..., fullgraph=True)`` and CUDA graphs.
        frame: ``"canonical"`` (default): steps 1–5 above, in canonical coordinates of the binding's
            frames (``bind(..., frames="balanced")`` by default); ``"lognorm"``: the second construction
            of ddc.md §3, from the Lean model of the companion paper (per-block log-norms and the invariant
            Adam input ``‖W‖·g_tan``, no canonical frame; :class:`~.lognorm.DDCAdamLogNorm`, which it
            returns). It covers the rescale, norm-gain and shift gauges (rotations, and a coordinate two
            scalings touch, are refused).
        kernels: ``"auto"`` (default, or the environment variable ``GAUGEMATH_KERNELS``): the generated
            Triton kernels for CUDA tensors when Triton imports, else the pure-torch reference path;
            ``"triton"`` (forced; ``RuntimeError`` where it cannot run) or ``"reference"``. Both paths
            compute the same step (agreement to 1e-6 in fp32 is tested); see
            :mod:`gaugemath.backends.torch.kernels`.
        fused: the free (unbound) parameters' AdamW update, as ``torch.optim.AdamW(fused=...)``: ``None``
            or ``False`` (default) the foreach form, bit-equal to ``torch.optim.AdamW``'s default;
            ``True`` torch's fused kernel, one pass per tensor, bit-equal to ``torch.optim.AdamW(fused=True)``
            (bf16 parameters: on fp32 copies with fp32 state, as the foreach form). In eager mode: under
            ``torch.compile`` the foreach form runs (Dynamo does not trace the in-place fused kernel on these
            tensors), as for the bound tensors' step 3, which takes the fused Adam kernel in eager mode on CPU.
    """

    def __new__(cls, *args, frame: str = "canonical", **kwargs):
        if frame not in FRAMES:
            raise ValueError(f"frame={frame!r}: choose from {FRAMES}")
        if frame == "lognorm" and cls is DDCAdam:
            from .lognorm import DDCAdamLogNorm

            return super().__new__(DDCAdamLogNorm)
        return super().__new__(cls)

    def __init__(self, params: Iterable, binding: Binding | None = None, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 vertical: str = "freeze", vertical_eps: float | None = None, vertical_rtol: float | None = None,
                 nonfinite: str = "raise", canonical_dtype: torch.dtype | None = None,
                 kernels: str | None = None, frame: str = "canonical", fused: bool | None = None):
        if frame == "lognorm" and not getattr(self, "LOGNORM", False):
            raise ValueError(f"frame='lognorm' is a construction of DDCAdam's; {type(self).__name__} takes "
                             "frame='canonical'")
        self.frame = frame
        if vertical not in VERTICAL:
            raise ValueError(f"vertical={vertical!r}: choose from {VERTICAL}")
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite={nonfinite!r}: choose from {NONFINITE}")
        if not 0.0 <= float(lr):
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, vertical=vertical,
                        vertical_eps=eps if vertical_eps is None else vertical_eps, vertical_rtol=vertical_rtol)
        super().__init__(params, defaults)  # imports Dynamo (torch.optim does), so marking the syncs costs nothing
        _host_syncs_run_eagerly()
        self.binding = binding if binding is not None else Binding([], [])
        self.nonfinite = nonfinite
        if canonical_dtype not in (None, torch.float32, torch.float64):
            raise TypeError(f"canonical_dtype={canonical_dtype}: choose torch.float32 or torch.float64")
        self.canonical_dtype = canonical_dtype
        kernels = os.environ.get("GAUGEMATH_KERNELS", "auto") if kernels is None else kernels
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r}: choose from {KERNELS}")
        self.kernels = kernels
        if fused not in (None, False, True):
            raise TypeError(f"fused={fused!r}: choose None, False or True")
        self.fused = bool(fused)
        self._batch_layers = True  # merge isomorphic families across layers (reference path; tests turn it off)
        self._plans = self._plan()
        self._claim_parameters()

    # ------------------------------------------------------------------ structure
    def _plan(self) -> list[dict]:
        """Per param group: free params, bound params (binding order), their layout and the projector."""
        where = {id(p): gi for gi, g in enumerate(self.param_groups) for p in g["params"]}
        names = {id(p): n for n, p in self.binding.params}
        layout = self.binding.layout
        params = self.binding.params
        for n, p in params:
            if id(p) not in where:
                raise GaugeError(self.binding.gauge_of(p), n, "is bound to a gauge but not given to the optimizer")
        self._bound_ids = {id(p) for _, p in params}
        self._work_shapes = {id(p): entry_shape(layout, [tuple(q.shape) for _, q in params], i)
                             for i, (_, p) in enumerate(params)}
        lead = self._clusters(where)
        balanced = self.binding.frames == "balanced"
        plans = []
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.dtype not in DTYPES:
                    raise TypeError(f"parameter {self._name_of(p)} has dtype {p.dtype}; "
                                    f"DDCAdam supports {[str(d) for d in DTYPES]}")
            mine = [i for i, (_, p) in enumerate(params) if lead[where[id(p)]] == gi]
            bound = [params[i][1] for i in mine]
            bound_ids = self._bound_ids

            def group_of(entry: int) -> int:
                return lead[where[id(params[layout.base(entry)][1])]]

            fams = [f for f in self.binding.families if group_of(f.members()[0][1]) == gi]
            if balanced:  # translations, scales (balanced jointly), rotations
                fams = [fams[i] for i in balanced_order(fams)]
            sub, entry_map = restrict(layout, mine)
            families = [reindexed(f, entry_map) for f in fams]
            devices = {p.device for p in bound}
            if len(devices) > 1:
                raise GaugeError(fams[0].family.gauge, fams[0].name, f"bound tensors on several devices {devices}")
            entry_names = [names[id(p)] for p in bound] + [f"{names[id(bound[i])]}[rows {a}:{b}]"
                                                           for i, a, b in sub.views]
            decays = tuple(self.param_groups[where[id(p)]]["weight_decay"] for p in bound)
            bases = [sub.base(i) for i in range(len(entry_names))]
            plans.append({
                "free": [p for p in group["params"] if id(p) not in bound_ids],
                "bound": bound,
                "names": entry_names,
                "layout": sub,
                "families": families,
                "groups": sorted({where[id(p)] for p in bound}),
                "decays": decays if len(set(decays)) > 1 else None,
                "projector": Projector(families, entry_names, bases, balanced) if families else None,
                "balance": JointBalance(families, entry_names, bases) if balanced and families else None,
            })
        return plans

    #: hyperparameters that param groups sharing a gauge must agree on (weight decay may differ)
    SHARED = ("lr", "betas", "eps", "vertical", "vertical_eps", "vertical_rtol")

    def _clusters(self, where: dict[int, int]) -> list[int]:
        """For each param group, the lowest-index group it shares a gauge with (directly or through
        others): a family's tensors are stepped together, in the plan of that lead group, each with its
        own group's weight decay (nanoGPT's and HF Trainer's decay / no-decay split of one gauge)."""
        parent = list(range(len(self.param_groups)))

        def root(g: int) -> int:
            while parent[g] != g:
                g = parent[g]
            return g

        params, layout = self.binding.params, self.binding.layout
        for f in self.binding.families:
            groups = {where[id(params[layout.base(i)][1])] for _, i in f.members()}
            first = min(groups)
            for g in groups:
                a, b = sorted((root(first), root(g)))
                parent[b] = a
            for g in groups:
                for key in self.SHARED:
                    if self.param_groups[g].get(key) != self.param_groups[first].get(key):
                        raise GaugeError(f.family.gauge, f.name, f"its tensors are in param groups {first} and {g} "
                                         f"with different {key} ({self.param_groups[first].get(key)} vs "
                                         f"{self.param_groups[g].get(key)}); they must agree within a gauge")
        return [root(g) for g in range(len(self.param_groups))]

    def _claim_parameters(self) -> None:
        """Warn when a parameter is already stepped by another live DDC optimizer: both would update it
        every step (torch.optim does not notice; a binding's frames would be computed twice)."""
        warned = False
        for g in self.param_groups:
            for p in g["params"]:
                entry = _HOLDERS.get(id(p))
                holder = entry[1]() if entry is not None and entry[0]() is p else None
                if holder is not None and holder is not self and not warned:
                    warnings.warn(f"parameter {self._name_of(p)} is also stepped by another live "
                                  f"{type(holder).__name__}: two optimizers over one parameter step it twice",
                                  stacklevel=3)
                    warned = True
                key = id(p)
                _HOLDERS[key] = (weakref.ref(p, lambda _, k=key: _HOLDERS.pop(k, None)), weakref.ref(self))

    def _name_of(self, p: Tensor) -> str:
        """A parameter's name for messages: the binding's, else the one the optimizer was given
        (``model.named_parameters()``, torch.optim's ``param_names``), else its place in the groups."""
        for n, q in self.binding.params:
            if q is p:
                return n
        for gi, g in enumerate(self.param_groups):
            for i, q in enumerate(g["params"]):
                if q is p:
                    names = g.get("param_names")
                    return names[i] if names else f"param_groups[{gi}]['params'][{i}]"
        return "<not in this optimizer>"

    def load_state_dict(self, state_dict: dict) -> None:
        """``torch.optim.Optimizer.load_state_dict``, keeping each state tensor's saved dtype (torch casts
        floating state to the parameter's dtype: bf16 parameters would get bf16 moments and an int64
        ``shape`` read back through bf16; fp64 canonical state would lose its precision), and refusing a
        checkpoint of another optimizer or model with the parameter at fault named."""
        params = [p for g in self.param_groups for p in g["params"]]
        saved_ids = [i for g in state_dict.get("param_groups", []) for i in g["params"]]
        for g in state_dict.get("param_groups", []):
            missing = [k for k in self.defaults if k not in g]
            if missing:
                raise GaugeError("checkpoint", type(self).__name__, f"this state_dict was not saved by "
                                 f"{type(self).__name__}: its param groups lack {missing}")
        warm_units = {(id(plan["bound"][0]), f"balance.{f}"): plan["families"][f].units
                      for plan in self._plans if plan["bound"] and plan["balance"] is not None
                      for f in plan["balance"].coupled}
        warm_units |= {(id(plan["bound"][0]), f"pivot.{f}"): fam.units for plan in self._plans if plan["bound"]
                       for f, fam in enumerate(plan["families"]) if fam.kind == "plane"}
        for p, i in zip(params, saved_ids):
            st = state_dict.get("state", {}).get(i, {})
            who = self._name_of(p)
            for key, value in st.items():
                units = warm_units.get((id(p), key))
                if units is not None and tuple(value.shape) != (units,):
                    raise GaugeError("checkpoint", who, f"state '{key}' has shape {tuple(value.shape)}, expected "
                                     f"({units},) (a checkpoint of another binding)")
            if "shape" in st and tuple(int(x) for x in st["shape"].tolist()) != tuple(p.shape):
                raise GaugeError("checkpoint", who, f"the checkpoint's parameter has shape "
                                 f"{tuple(int(x) for x in st['shape'].tolist())}, the model's {tuple(p.shape)}")
            for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                want = self._work_shapes.get(id(p), tuple(p.shape)) if id(p) in self._bound_ids else tuple(p.shape)
                if key in st and tuple(st[key].shape) != tuple(want):
                    raise GaugeError("checkpoint", who, f"state '{key}' has shape {tuple(st[key].shape)}, expected "
                                     f"{tuple(want)} (a checkpoint of another model or binding)")
        super().load_state_dict(state_dict)
        for p, i in zip(params, saved_ids):
            for key, value in state_dict.get("state", {}).get(i, {}).items():
                if isinstance(value, Tensor) and key in self.state[p]:
                    self.state[p][key] = value.detach().clone().to(device=p.device)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_plans"):
            self._plans = self._plan()

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):
        """One update of every param group; returns ``closure()``'s loss when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fresh = [p for g in self.param_groups for p in g["params"] if not self.state.get(p)]
        journal = _Journal() if self.nonfinite != "unchecked" and not _compiling() else None
        try:
            ready = []
            for index, group in enumerate(self.param_groups):
                tensors: list[Tensor] = []
                layout = self._init_group(group, index, tensors)
                free, bound = _slots(tensors, layout)
                if self.nonfinite != "unchecked" and not self._all_finite(group, free + bound):
                    continue  # nonfinite="skip": this group's parameters and state untouched
                ready.append((index, group, free, bound))
            commits = []
            for index, group, _, bound in ready:  # the steps that can still fail, first
                if bound:
                    if journal is not None:  # what _ddc writes before its update check
                        journal.save([t for _, _, st in bound for t in st.values()])
                    run = self._ddc_sharded if any(_is_dtensor(p) for p, _, _ in bound) else self._ddc
                    commits.append(run(group, self._plans[index], bound))
            for _, group, free, _ in ready:
                self._adamw(group, free)
            for commit in commits:  # the bound parameters are written last, when nothing is left to fail
                commit()
        except BaseException as error:  # all or nothing: parameters and state as before the step
            if journal is not None:
                journal.restore()
            for p in fresh:
                self.state.pop(p, None)
            if isinstance(error, _SkipStep):
                return loss
            raise
        return loss

    def _init_group(self, group: dict, index: int, tensors: list[Tensor]) -> tuple:
        """Check the gradients of param group ``index``, allocate missing state, and append to
        ``tensors`` each parameter with a gradient, its gradient and its state tensors (free
        parameters first, then the bound ones in binding order); returns the layout
        ``(free, bound)``, per parameter the state keys, for :func:`_slots`.

        Named and shaped as in ``torch.optim``: under ``torch.compile`` Dynamo runs this method
        eagerly instead of tracing it, guards what it appended to ``tensors`` by where it came from
        (parameters, ``.grad``, ``self.state``) and reuses the compiled step from step to step; a
        changed shape, dtype or missing gradient fails a guard, and the re-run raises here. The rest
        of the step reads tensors only from ``tensors``, never from ``self.state``.
        """
        plan = self._plans[index]
        names = dict(zip(map(id, plan["bound"]), plan["names"]))

        def who(p):
            return (self.binding.gauge_of(p) if id(p) in names else "no gauge"), self._name_of(p)

        bound = plan["bound"]
        missing = [p for p in bound if p.grad is None]
        if missing and len(missing) == len(bound):
            bound = []  # no bound tensor has a gradient this step: skipped, as torch.optim skips such tensors
        checked = [p for p in group["params"] if id(p) not in self._bound_ids] + list(bound)
        for p in checked:
            if p.grad is None:
                continue  # free: skipped; bound (some of the gauges' tensors have gradients): a zero gradient
            if p.grad.is_sparse:
                raise GaugeError(*who(p), "sparse gradients are not supported by DDCAdam")
            st = self.state.get(p, {})
            if "shape" in st and tuple(st["shape"].tolist()) != tuple(p.shape):
                raise GaugeError(*who(p), f"shape changed between steps: {tuple(st['shape'].tolist())} -> "
                                 f"{tuple(p.shape)}")
            if p.grad.shape != p.shape or p.grad.dtype != p.dtype:
                raise GaugeError(*who(p), f"gradient {tuple(p.grad.shape)}/{p.grad.dtype} does not match the "
                                 f"parameter {tuple(p.shape)}/{p.dtype}")
        free = [p for p in plan["free"] if p.grad is not None]
        for p in free:  # (a bound tensor without a gradient, beside others that have one, steps with zeros)
            self._init_state(p, torch.float32 if p.dtype == torch.bfloat16 else p.dtype, bound=False)
        if bound:
            sdtype = torch.float32 if bound[0].dtype == torch.bfloat16 else bound[0].dtype
            for p in bound:
                self._init_state(p, sdtype, bound=True)
            if group["vertical"] == "adam":  # scalar moments per orbit coordinate, kept with the first tensor
                for f, fam in enumerate(plan["families"]):
                    shape = (fam.units, fam.d_head, fam.d_head) if fam.kind == "head" else (fam.units,)
                    for moment in ("exp_avg", "exp_avg_sq"):
                        self.state[bound[0]].setdefault(f"vertical.{f}.{moment}",
                                                        torch.zeros(shape, dtype=sdtype, device=bound[0].device))
            if plan["balance"] is not None:  # the joint balance's last log-scales (NaN: none yet), see _warm_start
                for f in plan["balance"].coupled:
                    self.state[bound[0]].setdefault(f"balance.{f}", torch.full(
                        (plan["families"][f].units,), float("nan"), dtype=self._work_dtype(bound[0].dtype),
                        device=bound[0].device))
            for f, fam in enumerate(plan["families"]):  # the plane frames' anchor columns (-1: none yet)
                if fam.kind == "plane":
                    self.state[bound[0]].setdefault(f"pivot.{f}", torch.full((fam.units,), -1, dtype=torch.int64,
                                                                             device=bound[0].device))
        if bound:
            self._path(plan)  # decide the kernel path here, outside any compiled graph
        layout = []
        for part in (free, bound):
            keys = []
            for p in part:
                st = {k: v for k, v in self.state[p].items() if k != "shape"}
                tensors += [p, p.grad if p.grad is not None else torch.zeros_like(p), *st.values()]
                keys.append(tuple(st))
            layout.append(tuple(keys))
        return tuple(layout)

    def _all_finite(self, group: dict, slots: list[tuple]) -> bool:
        """One host sync: are all gradients finite? (``nonfinite="raise"``: if not, name the tensor.)"""
        grads = [g for _, g, _ in slots]
        if not grads or bool(torch.isfinite(extremes(grads)).all()):
            return True
        if self.nonfinite == "skip":
            return False
        bad = next(p for p, g, _ in slots if not torch.isfinite(g).all())
        gauge = self.binding.gauge_of(bad)
        raise GaugeError(gauge if gauge != "none" else "no gauge", self._name_of(bad),
                         "non-finite gradient (nonfinite='raise'; use 'skip' to skip such steps)")

    def _init_state(self, p: Tensor, work: torch.dtype, bound: bool) -> None:
        """Step count, shape and (where the base optimizer keeps them) Adam moments in ``work``."""
        st = self.state[p]
        if not st:
            st["step"] = torch.tensor(0.0)
            if self._uses_moments(p):
                st["exp_avg"] = self._zeros(p, work, bound)
                st["exp_avg_sq"] = self._zeros(p, work, bound)
            st["shape"] = torch.tensor(list(p.shape))

    def _zeros(self, p: Tensor, dtype: torch.dtype, bound: bool) -> Tensor:
        """A zero state tensor for ``p``: bound tensors keep state in their work layout (a weight bound
        transposed keeps transposed moments; a row permutation keeps permuted ones)."""
        shape = self._work_shapes.get(id(p)) if bound else None
        if shape is None or tuple(shape) == tuple(p.shape):  # (a row permutation keeps the shape)
            return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        return torch.zeros(shape, dtype=dtype, device=p.device)

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The canonical dtype for bound parameters of ``dtype``: ``canonical_dtype`` if given, else the
        parameters' own precision (float32 for bfloat16): the update is added to ``θ`` in parameter
        coordinates (step 5), so the work dtype's rounding reaches only ``Δθ``, not ``θ``."""
        if self.canonical_dtype is not None:
            return self.canonical_dtype
        return torch.float64 if dtype == torch.float64 else torch.float32

    def _uses_moments(self, p: Tensor) -> bool:
        """Whether ``p`` keeps per-coordinate Adam moments (every tensor here; not Muon's in ``DDCMuon``)."""
        return True

    def _adamw(self, group: dict, slots: list[tuple]) -> None:
        """``torch.optim.AdamW``'s foreach update, operation for operation (bf16: fp32 state), on the
        ``(param, grad, state)`` slots of the free parameters."""
        if not slots:
            return
        lr, (b1, b2), eps, wd = scalar(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
        by_dtype: dict[tuple, list] = {}
        for p, g, st in slots:
            work = torch.float32 if p.dtype == torch.bfloat16 else p.dtype
            st["step"] += 1
            by_dtype.setdefault((work, p.dtype, p.device), []).append((p, g, st))
        for (work, dtype, _), items in by_dtype.items():
            ps = [p for p, _, _ in items]
            theta = [p.detach() for p in ps] if work == dtype else [p.detach().to(work) for p in ps]
            grads = [g if work == dtype else g.to(work) for _, g, _ in items]
            m = [st["exp_avg"] for _, _, st in items]
            v = [st["exp_avg_sq"] for _, _, st in items]
            if self.fused and not _compiling():  # AdamW(fused=True)'s kernel (step tensors where the parameters are;
                # under torch.compile the foreach form, which Dynamo traces: the in-place fused op is refused)
                steps = [st["step"] if st["step"].device == p.device else st["step"].to(p.device)
                         for p, _, st in items]
                torch._fused_adamw_(theta, grads, m, v, [], steps, lr=lr, beta1=b1, beta2=b2, weight_decay=wd,
                                    eps=eps, amsgrad=False, maximize=False)
            else:
                _foreach_adamw(theta, grads, m, v, [step_count(st) for _, _, st in items], lr, b1, b2, eps, wd)
            if work != dtype:
                for p, t in zip(ps, theta):
                    p.copy_(t)

    def _path(self, plan: dict) -> tuple[str, list, Projector, list[Batch], Layout | None]:
        """The kernel path for this plan's device (decided once per device), its families and
        projector, and the batches the step runs: on the reference path isomorphic families across
        layers merged over one work buffer (:mod:`.batching`); on the Triton path single families."""
        device = plan["bound"][0].device
        if plan.get("device") != device:
            plan["device"], plan["path"] = device, select(self.kernels, device)
            if not plan["layout"].plain and plan["path"] == "triton":
                if self.kernels == "triton":
                    raise GaugeError("ddc", plan["names"][0], "kernels='triton' does not take bindings with "
                                     "transposed or row-selected tensors yet; use kernels='reference'")
                plan["path"] = "reference"
            if plan["path"] == "triton" and "kernel_families" not in plan:
                fams = [KernelFamily.of(f) for f in plan["families"]]
                balanced = plan["balance"] is not None
                proj = Projector(fams, plan["names"], balanced=balanced)
                plan["kernel_balance"] = JointBalance(fams, plan["names"]) if balanced else None
                plan["kernel_families"] = (fams, proj, [Batch([f], fam, fam.units) for f, fam in enumerate(fams)], None)
            if plan["path"] == "reference" and "batches" not in plan:
                fams = plan["families"]
                plan["single"] = ([Batch([f], fam, fam.units) for f, fam in enumerate(fams)], None)
                plan["batches"] = (batching.plan(fams, [tuple(p.shape) for p in plan["bound"]])
                                   if self._batch_layers and plan["layout"].plain and plan["decays"] is None
                                   else plan["single"])
            for kind in ("single", "batches", "kernel_families"):  # coefficient caches filled here, not in a
                for b in (plan[kind][-2] if kind in plan else []):  # compiled step (a cache miss is a recompile)
                    b.family.prime()
        if plan["path"] == "triton":
            return "triton", *plan["kernel_families"]
        # Under torch.compile, single families on separate work copies: Inductor handles in-place
        # updates of views of one large buffer by rewriting the buffer (measured: 2.9 s per compiled
        # step on gpt_small_cpu against 0.21 s), and it fuses the per-family operations anyway.
        return "reference", plan["families"], plan["projector"], *plan["single" if _compiling() else "batches"]

    def _ddc(self, group: dict, plan: dict, slots: list[tuple]) -> Callable[[], None]:
        """Steps 1–5 on the ``(param, grad, state)`` slots of the bound parameters (binding order), checked; returns
        the write of the new parameters, which :meth:`step` calls once every group and the free parameters have
        stepped (so a later failure leaves them as they were; the state it wrote is in the step's journal)."""
        lr, (b1, b2), wd = scalar(group["lr"]), group["betas"], group["weight_decay"]
        vertical, veps = group["vertical"], group["vertical_eps"]
        params = [p for p, _, _ in slots]
        states = [st for _, _, st in slots]
        path, fams, proj, batches, layout = self._path(plan)
        n = len(params)
        sdtype = torch.float32 if params[0].dtype == torch.bfloat16 else params[0].dtype
        work = self._work_dtype(params[0].dtype)
        lay = plan["layout"]
        if layout is None:  # one work copy per tensor (in its work layout), and the row views of the layout
            theta_flat = grad_flat = None
            theta = entries(lay, work_copies(lay, [p.detach() for p in params], work))
            grad = entries(lay, work_copies(lay, [g for _, g, _ in slots], work))
        else:  # one work buffer; tensors and layer stacks are views of it
            theta_flat, theta = layout.buffer([p.detach() for p in params], work)
            grad_flat, grad = layout.buffer([g for _, g, _ in slots], work)
        balance = plan["kernel_balance"] if path == "triton" else plan["balance"]
        # 1. canonical coordinates (θ̃, and g̃ by the covector rule)
        warm = None if _compiling() or balance is None else _warm_start(states[0], batches, balance)
        pivots = _held(states[0], batches, "pivot", "plane")
        frames, masks, balance_infos = canonicalise(batches, theta, grad, balance, sync=not _compiling(), warm=warm,
                                                    pivots=pivots)
        if warm is not None:  # the joint balance's log-scales: the next step's start (state: resumes bit for bit)
            _keep_warm(states[0], batches, warm)
        _keep_warm(states[0], batches, pivots, "pivot")  # the plane frames' anchor columns (hysteresis)
        grams, c_theta = zip(*[b.family.gram_and_self_coords(theta) for b in batches])  # 2. split
        grams = [torch.where(b.family.unit_mask(m, g), _unit_gram(g), g) for b, m, g in zip(batches, masks, grams)]
        c_theta = [_off(b, m, c) for b, m, c in zip(batches, masks, c_theta)]
        decays = plan["decays"]
        if decays is not None:  # per-tensor weight decay λ_t (param groups): the decay term is λ ⊙ θ̃
            decayed = entries(lay, torch._foreach_mul(theta[:n], list(decays)))
            c_theta = [_off(b, m, b.family.coords(theta, decayed)) for b, m in zip(batches, masks)]
            wd = 1.0
        grams, c_theta = _per_family(batches, grams, len(fams)), _per_family(batches, c_theta, len(fams))
        fact = proj.factor(theta, grams, _per_family(batches, masks, len(fams)))
        rtol = group["vertical_rtol"]
        rtol = torch.finfo(params[0].dtype).eps ** 0.5 if rtol is None else rtol  # the gradient's resolution
        # vertical coordinates of g̃; round-off is not a signal (exact zero)
        rhs_g = [_off(b, m, b.family.vertical_rhs(theta, grad, rtol)) for b, m in zip(batches, masks)]
        coef_g = proj.solve(fact, _stack(_per_family(batches, rhs_g, len(fams))))
        for b in batches:  # g̃ is not needed again: make it horizontal in place
            b.family.lift(b.join([coef_g[f][..., 0] for f in b.members]), theta, grad, alpha=-1.0)
        # 3–4. δ = u + λθ̃ (per-tensor λ: u + λ ⊙ θ̃), then its horizontal part (one factorisation, the Schur
        # solves' right-hand sides: c_δ, and c_θ where the vertical channel needs it)
        if path != "triton" and self._fused_adam(params, states, work):  # Adam adds u onto λθ̃ in one pass
            if decays is not None:  # λ ⊙ θ̃ is formed already (per-tensor decays run unbatched: layout None)
                start, scale = decayed[:n], None
            else:
                start, scale = (theta_flat if layout is not None else theta[:n]), wd
            bc1, bc2 = self._adam_into(group, states, grad[:n], grad_flat, start, scale)
            delta_flat, delta = grad_flat, grad  # δ = u + λθ̃ now fills g̃_H's buffer (and its views)
        else:
            u, bc1, bc2 = self._base_directions(group, params, states, grad[:n], theta[:n], sdtype, work,
                                                fused=path == "triton")
            u = [x if x.dtype == work else x.to(work) for x in u]
            if decays is not None:
                delta = entries(lay, torch._foreach_add(u, decayed[:n]))
            else:
                delta = entries(lay, torch._foreach_add(u, theta[:n], alpha=wd))
            if layout is not None:  # one pass: δ into its work buffer (the layer stacks are views of it)
                delta_flat, delta = layout.buffer(delta[:n], work)
        columns = [_per_family(batches, [_off(b, m, b.family.coords(theta, delta)) for b, m in zip(batches, masks)],
                               len(fams))]
        if vertical != "freeze":
            columns.append(c_theta)
        coef = proj.solve(fact, _stack(*columns))
        for b in batches:
            cd, cg = b.join([coef[f] for f in b.members]), b.join([coef_g[f] for f in b.members])
            a = -cd[..., 0]  # −c_δ: makes δ = u + λθ̃ horizontal
            if vertical == "sgd":
                a = a + cg[..., 0] + wd * cd[..., 1]
            elif vertical == "adam":
                a = a + b.join([self._vertical_adam(states[0], f, fams[f], coef_g[f][..., 0], fact, b1, b2, bc1, bc2,
                                                    veps, sdtype) for f in b.members])
                a = a + wd * cd[..., 1]
            b.family.lift(a, theta, delta)
        # 5. the step Δθ̃ = −lr·δ, mapped back as a tangent vector, Δθ = D(h)⁻¹Δθ̃ (the linear part of the
        # inverse frames, in reverse order: a translation's is the identity), added to θ itself: θ' = θ + Δθ.
        # (Not h⁻¹·(θ̃ + Δθ̃): that rounds θ twice more in the work dtype; here its rounding meets only Δθ.)
        if layout is not None:
            _scale(delta_flat, lr)
        else:
            _scale(delta[:n], lr)
        for b, h in zip(reversed(batches), reversed(frames)):
            if b.family.kind != "translate":
                b.family.act(h, delta, inverse=True)
        new = delta[:n]
        torch._foreach_add_(new, [work_view(lay, k, p.detach()) for k, p in enumerate(params)])
        if self.nonfinite != "unchecked":
            self._check_update(new, plan, batches, frames, fact["info"], balance_infos, fact["info_of"])

        def commit() -> None:
            for k, (p, t) in enumerate(zip(params, new)):
                p.copy_(stored(lay, k, t))
        return commit

    def _ddc_sharded(self, group: dict, plan: dict, slots: list[tuple]) -> Callable[[], None]:
        """:meth:`_ddc` for bound DTensor parameters (FSDP2's ``fully_shard``): the step on their full tensors,
        the same on every rank, each rank keeping its shard of the result.

        The step's per-unit statistics (column norms, Gram blocks, frames) read whole slices, which a shard
        splits. Here each bound parameter, its gradient and its DTensor state are gathered (``full_tensor()``,
        one all-gather each), the ordinary step runs on them, and each rank writes back its own shard
        (``distribute_tensor(..., src_data_rank=None)``: a local slice, no communication). It equals the
        single-process step bit for bit (tests/test_distributed.py, 2 gloo processes); the price is an
        all-gather of the bound parameters, gradients and moments per step, and their full size in memory on
        every rank while it runs. Plain state (step counts, the balance's log-scales) is the same on every
        rank and is updated in place."""
        from torch.distributed.tensor import distribute_tensor

        def full(t: Tensor) -> Tensor:
            return t.full_tensor() if _is_dtensor(t) else t

        proxies = [(full(p.detach()), full(g), {k: full(v) for k, v in st.items()}) for p, g, st in slots]
        commit_full = self._ddc(group, plan, proxies)

        def commit() -> None:  # the full tensors' step, then each rank's shard of it
            commit_full()
            for (p, _, st), (fp, _, fst) in zip(slots, proxies):
                for t, f in [(p.detach(), fp), *((st[k], fst[k]) for k in st)]:
                    if _is_dtensor(t):
                        t.to_local().copy_(distribute_tensor(f, t.device_mesh, t.placements,
                                                             src_data_rank=None).to_local())
        return commit

    #: step 3 may run as torch's fused AdamW kernel (DDCMuon's base directions are not Adam's)
    FUSED_ADAM = True

    def _fused_adam(self, params: list[Tensor], states: list[dict], work: torch.dtype) -> bool:
        """Whether step 3 can run as ``torch._fused_adamw_`` writing ``u`` into its work buffer: eager, CPU
        (the state's step counts are CPU tensors, as that kernel wants on CPU), moments in the work dtype."""
        return (self.FUSED_ADAM and not _compiling() and params[0].device.type == "cpu"
                and hasattr(torch, "_fused_adamw_") and all(st["exp_avg"].dtype == work for st in states))

    def _adam_into(self, group: dict, states: list[dict], grad_h: list[Tensor], grad_flat: Tensor | None,
                   start: Tensor | list[Tensor], scale: float | None) -> tuple[float, float]:
        """Step 3 in one fused pass, written over the horizontal gradient's own work buffer: torch's fused AdamW
        kernel given ``g̃_H`` as both "parameters" and gradients, with ``lr = −1`` and weight decay ``−1``, computes
        per entry ``g̃_H·(1 − 1) + m̂/(√v̂ + ε) = u`` from the ``g̃_H`` it has just read (it loads every operand of
        an entry before it stores; bit-equal to writing into a zeroed buffer, tests/test_torch_backend.py) and
        updates the moments in place. The decay term is then added in the same buffer, ``δ = u + λθ̃``: ``start``
        is ``θ̃`` (its flat buffer ``grad_flat``'s twin where the step is layer-batched, else a tensor per
        parameter) times ``scale``; with ``scale=None`` a list already holding ``λ ⊙ θ̃`` (per-tensor decays).
        No new full-size buffer is allocated (a fresh one page-faulted on every step on CPU). ``g̃_H`` is not
        needed after this step. Returns ``(bc₁, bc₂)``. The kernel's formula is Adam's (``m ← β₁m + (1−β₁)g``,
        ``v ← β₂v + (1−β₂)g²``, ``u = (m/bc₁)/(√v/√bc₂ + ε)``); its rounding may differ from the foreach form
        in the last place; both runs of an equivariance test take the same kernel."""
        (b1, b2), eps = group["betas"], group["eps"]
        for st in states:
            st["step"] += 1
        step = step_count(states[0])
        torch._fused_adamw_(grad_h, grad_h, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                            [], [st["step"] for st in states], lr=-1.0, beta1=b1, beta2=b2, weight_decay=-1.0,
                            eps=eps, amsgrad=False, maximize=False)
        if scale is None:
            torch._foreach_add_(grad_h, start)
        elif scale != 0:
            if grad_flat is not None:
                grad_flat.add_(start, alpha=scale)
            else:
                torch._foreach_add_(grad_h, start, alpha=scale)
        return 1 - b1**step, 1 - b2**step

    def _base_directions(self, group, params, states, grad_h, theta, sdtype, work, fused: bool = False):
        """3. The base optimizer in the canonical frame: Adam moments of ``g̃_H`` (foreach, in the
        state dtype); returns ``u`` (the step is ``−lr (u + λθ̃)`` before projection; in the state
        dtype or the work dtype, the caller casts) and the bias corrections."""
        (b1, b2), eps = group["betas"], group["eps"]
        for st in states:
            st["step"] += 1
        step = step_count(states[0])
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        m = [st["exp_avg"] for st in states]
        v = [st["exp_avg_sq"] for st in states]
        if fused:  # the Triton path: one fused launch per tensor
            return adam_directions(grad_h, m, v, (b1, b2), eps, bc1, bc2, work), bc1, bc2
        gs = grad_h if sdtype == work else [g.to(sdtype) for g in grad_h]
        torch._foreach_lerp_(m, gs, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, gs, gs, 1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2**0.5)
        torch._foreach_add_(denom, eps)
        u = torch._foreach_div(m, denom)
        torch._foreach_div_(u, bc1)
        return u, bc1, bc2  # in the state dtype: the caller moves u into its work buffer

    def _vertical_adam(self, st0: dict, f: int, fam, c: Tensor, fact, b1, b2, bc1, bc2, veps,
                       sdtype: torch.dtype) -> Tensor:
        """Scalar Adam per orbit coordinate on normalised generators; returns coefficients on ``X``."""
        if fam.kind == "head":
            lam = fact["grams"][f].diagonal(dim1=1, dim2=2)
            norm = torch.sqrt(lam[:, :, None] + lam[:, None, :])  # ‖(E_ab − E_ba)Θ‖
            norm = norm + torch.eye(norm.shape[-1], dtype=norm.dtype, device=norm.device)
        else:
            norm = fact["grams"][f].sqrt()
        # moments in the state dtype ``sdtype``, like the per-coordinate ones (allocated by _init_group)
        m, v = st0[f"vertical.{f}.exp_avg"], st0[f"vertical.{f}.exp_avg_sq"]
        chat = (c * norm).to(sdtype)
        m.lerp_(chat, 1 - b1)
        v.mul_(b2).addcmul_(chat, chat, value=1 - b2)
        return ((m / bc1) / ((v.sqrt() / bc2**0.5).add_(veps))).to(c.dtype) / norm

    def _check_update(self, theta: list[Tensor], plan: dict, batches: list[Batch], frames: list,
                      infos: list[Tensor], balance_infos: list[Tensor] = (), which: list[int] = ()) -> None:
        """One host sync: is the update finite and was every coupled Gram block positive definite? If
        not, name the family (and layer) whose frame broke, or the coupled families (``which[j]``: the
        projector component whose factorisation ``infos[j]`` reports)."""
        # finite, and representable in the parameters' dtype (an fp64 work value above fp32's max is inf there)
        peak = extremes(theta).abs()
        ok = (torch.isfinite(peak) & (peak <= torch.finfo(plan["bound"][0].dtype).max)).all()
        if infos or balance_infos:
            ok = ok & (torch.stack([*infos, *balance_infos]) == 0).all()
        if bool(ok):
            return
        if self.nonfinite == "skip":
            raise _SkipStep
        for p, name in zip(plan["bound"], plan["names"]):  # the cause as it is: a parameter that was not finite
            if not bool(torch.isfinite(p).all()):
                raise GaugeError(self.binding.gauge_of(p), name, "the parameter is not finite (before this step)")
        for b, h in zip(batches, frames):
            fam = b.family
            parts = h if isinstance(h, tuple) else (h,)
            bad = torch.zeros(fam.units, dtype=torch.bool, device=theta[0].device)
            for part in parts:
                v = part.reshape(fam.units, -1)
                bad |= ~torch.isfinite(v).all(1)
                if fam.kind == "scale":
                    bad |= (v == 0).any(1)
            if bool(bad.any()):
                k = int(torch.nonzero(bad)[0, 0])
                member = plan["families"][b.members[k // b.units]]
                raise GaugeError(member.family.gauge, member.name, f"degenerate orbit at unit {k % b.units} "
                                 "(zero-norm slices): the canonical frame is undefined there")
        components = self._path(plan)[2].components
        for k, info in zip(which, infos):
            comp = components[k]
            if int(info) != 0:
                fams = self._path(plan)[1]
                names = ", ".join(fams[f].name for f in (*comp.side_a, *comp.side_b))
                raise GaugeError(fams[comp.side_a[0]].family.gauge, names,
                                 "the Gram matrix of these coupled orbit families is numerically singular "
                                 "(nearly dependent orbit directions): the vertical projection is undefined")
        if any(int(i) != 0 for i in balance_infos):
            names = ", ".join(plan["families"][f].name for f in plan["balance"].members)
            raise GaugeError("balanced frame", names, "the joint balance of these scale families did not converge "
                             "(nearly dependent orbit directions): the canonical point is undefined")
        fmax = torch.finfo(plan["bound"][0].dtype).max
        bad = next(i for i, t in enumerate(theta) if not (torch.isfinite(t).all() and t.abs().max() <= fmax))
        raise GaugeError(self.binding.gauge_of(plan["bound"][bad]), plan["names"][bad],
                         f"the DDC update overflows {plan['bound'][bad].dtype} (nothing was changed)")


def _foreach_adamw(theta: list[Tensor], grads: list[Tensor], m: list[Tensor], v: list[Tensor], steps: list,
                   lr, b1: float, b2: float, eps: float, wd: float) -> None:
    """``torch.optim.AdamW``'s foreach update in place, operation for operation (``steps``: the counts after
    this step's increment; Python floats in eager mode, tensors under ``torch.compile``)."""
    torch._foreach_mul_(theta, 1 - lr * wd)
    torch._foreach_lerp_(m, grads, 1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, grads, grads, 1 - b2)
    bc1 = [1 - b1**step for step in steps]
    bc2_sqrt = [(1 - b2**step) ** 0.5 for step in steps]
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    step_size = [(lr / bc) * -1 for bc in bc1]
    if _compiling():  # 0-dim tensor step sizes: no scalar-list overload takes them on every device
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, step_size)
        torch._foreach_add_(theta, update)
    else:
        torch._foreach_addcdiv_(theta, m, denom, step_size)


class _SkipStep(Exception):
    """``nonfinite="skip"``: the update is not finite; the step leaves everything as it was."""


class _Journal:
    """Copies of tensors a step writes before it knows it will succeed, restored if it does not."""

    def __init__(self):
        self.saved: list[tuple[Tensor, Tensor]] = []

    def save(self, tensors: list[Tensor]) -> None:
        self.saved += [(t, t.detach().clone()) for t in tensors]

    def restore(self) -> None:
        with torch.no_grad():
            for t, copy in reversed(self.saved):
                t.copy_(copy)


def _slots(tensors: list[Tensor], layout: tuple) -> tuple[list[tuple], list[tuple]]:
    """``(free, bound)``: per parameter ``(param, grad, {state key: tensor})`` from the flat list
    and layout of :meth:`DDCAdam._init_group` (the state dicts are new; their tensors are the state's)."""
    parts, k = [], 0
    for keys_of in layout:
        part = []
        for keys in keys_of:
            part.append((tensors[k], tensors[k + 1], dict(zip(keys, tensors[k + 2 : k + 2 + len(keys)]))))
            k += 2 + len(keys)
        parts.append(part)
    return parts[0], parts[1]


def extremes(tensors: list[Tensor]) -> Tensor:
    """Every tensor's least and greatest entry, ``(2·k,)`` (empty tensors left out): all finite iff every
    entry is (a NaN propagates through ``aminmax``; the 2-norm would overflow for finite 1e19 in fp32).
    One read-only pass, ~10× cheaper on CPU than ``_foreach_norm(ord=inf)``, which takes ``|t|`` first."""
    parts = [v.full_tensor() if _is_dtensor(v) else v for t in tensors if t.numel() for v in torch.aminmax(t)]
    return torch.stack(parts) if parts else torch.zeros(0)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _host_syncs_run_eagerly() -> None:
    """Mark the two host-sync methods (all-finite checks) ``torch.compiler.disable``: under
    ``torch.compile`` each is then a clean graph break run eagerly, not a traced ``Tensor.item()``
    with Dynamo's warning. Done at the first construction instead of with a decorator, because the
    decorator imports Dynamo (and with it Triton) when this module is imported."""
    if getattr(DDCAdam, "_syncs_marked", False):
        return
    for name in ("_all_finite", "_check_update"):
        setattr(DDCAdam, name, torch.compiler.disable(getattr(DDCAdam, name)))
    DDCAdam._syncs_marked = True


def scalar(x: float | Tensor) -> float | Tensor:
    """A hyperparameter such as ``lr``: a Tensor (for ``torch.compile`` with an LR scheduler, which then
    updates it in place instead of triggering a recompilation) stays one under ``torch.compile``; in
    eager mode it is read as a Python float (one host read), since the foreach operations take numbers."""
    return x.item() if isinstance(x, Tensor) and not _compiling() else x


def step_count(state: dict) -> float | Tensor:
    """The state's step count: a Python float in eager mode (torch.optim's habit: ``.item()`` is cheaper
    than tensor arithmetic on a CPU scalar), the tensor itself under ``torch.compile`` so the bias
    corrections ``1 − βᵗ`` are traced as tensor expressions instead of baked in as constants (which
    would recompile the step every step). In float64 there, as the Python float: ``1 − β₂ᵗ`` in float32
    loses five digits to cancellation at ``t = 1`` (β₂ = 0.999), which Adam's first, sign-like step
    turns into visible differences (measured: 2e-6 on a SwiGLU matrix of ``tiny_gpt``)."""
    return state["step"].to(torch.float64) if _compiling() else state["step"].item()


def _warm_start(st0: dict, batches: list[Batch], balance) -> dict[int, Tensor]:
    """Per batch of coupled scale families, the log-scales the joint balance found last step (state
    ``balance.<family>``): Newton's starting point (:meth:`~.balance.JointBalance.solve`). NaN where there is
    none (before the first step, or a checkpoint saved before this state existed): the per-unit closed form
    is the start there, and the solve fills it in. Kept in the optimizer state so that a resumed checkpoint
    steps bit for bit as the uninterrupted run."""
    if not balance.coupled:
        return {}
    coupled = set(balance.coupled)
    first = st0[f"balance.{balance.coupled[0]}"]
    return {i: b.join([st0[f"balance.{f}"] if f in coupled else first.new_full((b.units,), float("nan"))
                       for f in b.members])
            for i, b in enumerate(batches) if any(f in coupled for f in b.members)}


def _held(st0: dict, batches: list[Batch], prefix: str, kind: str) -> dict[int, Tensor]:
    """Per batch of ``kind`` families, their state ``<prefix>.<family>`` joined along the units (e.g. the
    plane frames' anchor columns held from last step, :meth:`~.orbits.BoundFamily.pivot`)."""
    return {i: b.join([st0[f"{prefix}.{f}"] for f in b.members]) for i, b in enumerate(batches)
            if b.family.kind == kind and all(f"{prefix}.{f}" in st0 for f in b.members)}


def _keep_warm(st0: dict, batches: list[Batch], warm: dict[int, Tensor], prefix: str = "balance") -> None:
    """Write per-unit values carried to the next step (``warm``: the balance's new log-scales, or the planes'
    anchor columns) back into the state ``<prefix>.<family>``, in place."""
    for i, logs in warm.items():
        for f, part in zip(batches[i].members, batches[i].split(logs)):
            key = f"{prefix}.{f}"
            if key in st0:
                st0[key].copy_(part)


def _off(b: Batch, mask: Tensor, coords: Tensor) -> Tensor:
    """Vertical coordinates with those of degenerate units set to zero (they have no vertical space)."""
    return torch.where(b.family.unit_mask(mask, coords), torch.zeros_like(coords), coords)


def _unit_gram(g: Tensor) -> Tensor:
    """The Gram block of a unit without vertical space: 1 (heads: the identity), so its solve gives 0."""
    if g.dim() == 3:
        return torch.eye(g.shape[-1], dtype=g.dtype, device=g.device).expand_as(g)
    return torch.ones_like(g)


def _per_family(batches: list[Batch], outputs, count: int) -> list[Tensor]:
    """Per-batch outputs ``(L·units, …)`` as a list indexed by family (views)."""
    out: list[Tensor] = [None] * count  # type: ignore[list-item]
    for b, o in zip(batches, outputs):
        for f, part in zip(b.members, b.split(o)):
            out[f] = part
    return out


def _scale(y: Tensor | list[Tensor], lr: float | Tensor) -> None:
    """In place ``y ← −lr·y`` (a flat buffer or a list of tensors; ``lr`` a tensor under torch.compile)."""
    if isinstance(y, Tensor):
        y.mul_(-lr)
    else:
        torch._foreach_mul_(y, -lr)


def _stack(*columns: list[Tensor]) -> list[Tensor]:
    """Per family, stack right-hand sides along a new last axis."""
    return [torch.stack(parts, dim=-1) for parts in zip(*columns)]
