"""The mechanism experiments (``gaugemath experiment NAME``): fast checks of data and presets, and (slow)
each CPU default at reduced size, asserting files, table rows, finite values and one mechanism fact."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gaugemath.experiments import EXPERIMENTS, experiment

MINE = ("overtrain", "teacher_student", "layernorm_block", "zloss", "equivariance")


# ------------------------------------------------------------------------------------------ fast
def test_registry_lists_the_experiments_and_names_choices():
    assert set(MINE) <= set(EXPERIMENTS)
    with pytest.raises(ValueError, match="choose from .*teacher_student"):
        experiment("nope")


@pytest.mark.parametrize("name", MINE)
def test_presets_have_the_cli_fields_and_overrides_apply(name):
    module = experiment(name)
    assert set(module.SCALES) == {"cpu", "paper"}
    cfg = module.configure("cpu", steps=3, seeds=(4,), optimizers=("adamw",), nothing=None)
    assert (cfg.steps, cfg.seeds, cfg.optimizers) == (3, (4,), ("adamw",))
    assert module.configure("cpu", steps=None) == module.SCALES["cpu"]
    with pytest.raises(ValueError, match="choose from cpu, paper"):
        module.configure("gpu")
    with pytest.raises(TypeError):
        module.configure("cpu", no_such_field=1)


def test_overtrain_corpus_ships_with_python_and_splits_without_overlap():
    ot = experiment("overtrain")
    text = ot.corpus()
    assert len(text) > 100_000 and all(c == "\n" or 32 <= ord(c) < 127 for c in text[:5000])
    ids, vocab = ot.encode(text)
    assert "".join(vocab[i] for i in ids[:50].tolist()) == text[:50]
    cfg = ot.configure("cpu")
    tr, va = ot.split(ids, cfg)
    assert len(tr) == cfg.train_chars and len(va) == int(len(ids) * cfg.val_fraction)
    assert cfg.train_chars <= len(ids) - len(va)  # disjoint: train is a prefix, validation the suffix
    with pytest.raises(ValueError, match="do not fit"):
        ot.split(ids, ot.configure("cpu", train_chars=len(ids)))


def test_layernorm_activation_kernel_is_inverse_gain():
    lb = experiment("layernorm_block")
    cfg = lb.configure("cpu")
    x, *_ = lb.dataset(cfg, 0)
    model = lb.block(cfg.d, cfg.d_out)
    with torch.no_grad():
        model[0].weight.copy_(torch.exp(torch.randn(cfg.d)))
        stats = lb.kernel_stats(model[0](x), model[0].weight)
    assert stats["lambda_min"] < 1e-9 * stats["lambda_2"]
    assert stats["kernel_misalignment"] < 1e-9


def test_zloss_objective_breaks_only_through_the_shift_mode():
    zl = experiment("zloss")
    z, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 5, (7,))
    assert torch.allclose(zl.objective(z + 3.0, y, 0.0), zl.objective(z, y, 0.0))  # CE: shift-invariant
    assert not torch.allclose(zl.objective(z + 3.0, y, 1e-2), zl.objective(z, y, 1e-2))
    labels = [a.label for a in zl.arms(zl.configure("cpu"))]
    assert labels == ["adamw", "ddcadam[freeze]", "ddcadam[sgd]", "ddcadam[adam]"]


def test_equivariance_rejects_unknown_constructions():
    eq = experiment("equivariance")
    with pytest.raises(ValueError, match="unknown constructions"):
        eq.constructions(eq.configure("cpu", constructions=("nope",)))


# ------------------------------------------------------------------------------------------ slow
def _check_run(result, tmp_path, figures):
    assert result["dir"] == str(tmp_path)
    for name in ("config.json", "metrics.jsonl", "results.json", *(f"{f}.png" for f in figures)):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table"] == result["table"] and saved["wall_s"] >= 0
    return {r["arm"] if "arm" in r else r["construction"]: r for r in result["summary"]}


def _finite(row, keys):
    return all(row[k] is not None and math.isfinite(row[k]) for k in keys)


@pytest.mark.slow
def test_equivariance_ddc_exact_peers_not(tmp_path):
    eq = experiment("equivariance")
    cfg = eq.configure("cpu", steps=10, constructions=("relu_rescale", "norm_scale.layernorm", "head_rotation.rope"))
    result = eq.run(cfg, tmp_path, show_progress=False)
    rows = _check_run(result, tmp_path, ["equivariance"])
    assert set(rows) == set(cfg.constructions)
    for row in rows.values():
        assert row["ddcadam"] < 1e-6 and row["ddcmuon"] < 1e-6
        assert row["adamw"] > 1e-3 and row["muon"] > 1e-4
    assert len([line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]) == 4 * 3 * 10


@pytest.mark.slow
def test_teacher_student_ddcadam_update_is_horizontal(tmp_path):
    ts = experiment("teacher_student")
    cfg = ts.configure("cpu", steps=150, seeds=(0,), student_hidden=16, n_train=128, n_test=256)
    result = ts.run(cfg, tmp_path, show_progress=False)
    rows = _check_run(result, tmp_path, ["teacher_student", "charges"])
    assert list(rows) == ["adamw", "ddcadam", "gd"]
    assert all(_finite(r, ts.KEYS) for r in rows.values())
    assert rows["ddcadam"]["vertical_fraction_max"] < 1e-3 < 0.1 < rows["adamw"]["vertical_fraction_mean"]
    assert rows["ddcadam"]["final_phi_drift"] < 0.2 * rows["adamw"]["final_phi_drift"]
    assert rows["gd"]["final_charge_drift"] < 0.1 * rows["adamw"]["final_charge_drift"]  # GD: Q conserved to O(η²)
    assert rows["adamw"]["final_train_loss"] < 0.5 * json.loads((tmp_path / "metrics.jsonl").read_text()
                                                                   .splitlines()[0])["train_loss"]


@pytest.mark.slow
def test_layernorm_block_kernel_and_horizontal_updates(tmp_path):
    lb = experiment("layernorm_block")
    result = lb.run(lb.configure("cpu", steps=100, seeds=(0,)), tmp_path, show_progress=False)
    rows = _check_run(result, tmp_path, ["layernorm_block"])
    assert list(rows) == ["adamw", "ddcadam", "gd"]
    for r in rows.values():
        assert r["min_kernel_cos"] > 1 - 1e-9 and r["final_lambda_min"] < 1e-9 * r["final_lambda_2"]
    assert rows["ddcadam"]["vertical_fraction_mean"] < 1e-2 < 0.1 < rows["adamw"]["vertical_fraction_mean"]


@pytest.mark.slow
def test_zloss_freeze_keeps_the_shift_charge(tmp_path):
    zl = experiment("zloss")
    result = zl.run(zl.configure("cpu", steps=60, seeds=(0,)), tmp_path, show_progress=False)
    _check_run(result, tmp_path, ["zloss"])
    rows = {(r["arm"], r["zloss"]): r for r in result["summary"]}
    assert len(rows) == 4 * 2 and all(_finite(r, zl.KEYS) for r in rows.values())
    # freeze drops the vertical component: the shift charges do not move, even with z-loss breaking the gauge
    assert rows[("ddcadam[freeze]", 1e-3)]["shift_charge_drift"] < 1e-4
    assert rows[("adamw", 1e-3)]["shift_charge_drift"] > 1e-2
    assert rows[("ddcadam[sgd]", 1e-3)]["vertical_fraction_mean"] > 10 * rows[("ddcadam[sgd]", 0.0)][
        "vertical_fraction_mean"]


@pytest.mark.slow
def test_overtrain_reports_the_gap(tmp_path):
    ot = experiment("overtrain")
    cfg = ot.configure("cpu", steps=60, log_every=20, train_chars=2000, eval_windows=8, d_model=16, d_ff=32,
                       context=16, batch=8)
    result = ot.run(cfg, tmp_path, show_progress=False)
    rows = _check_run(result, tmp_path, ["overtrain"])
    assert list(rows) == ["adamw", "ddcadam"] and all(_finite(r, ot.KEYS) for r in rows.values())
    for r in rows.values():
        assert math.isclose(r["final_gap"], r["final_val_loss"] - r["final_train_loss"], rel_tol=1e-9, abs_tol=1e-12)
        assert r["rate_cells"] > 0 and 0 <= r["rates_read"] <= r["rate_cells"]
    assert rows["ddcadam"]["vertical_fraction_mean"] < 1e-3 < rows["adamw"]["vertical_fraction_mean"]


@pytest.mark.slow
def test_diagonal_linear_small_init_gd_recovers_sparse_and_ddcadam_is_horizontal(tmp_path):
    dl = experiment("diagonal_linear")
    result = dl.run(dl.configure("cpu", steps=600, log_every=50), tmp_path, show_progress=False)
    rows = _check_run(result, tmp_path, ["diagonal_linear"])
    assert list(rows) == [f"{o}[α={a}]" for a in ("0.01", "1") for o in ("adamw", "ddcadam", "gd")]
    assert all(_finite(r, dl.KEYS) for r in rows.values())
    for a in ("0.01", "1"):
        ddc, adamw = rows[f"ddcadam[α={a}]"], rows[f"adamw[α={a}]"]
        assert ddc["vertical_fraction_mean"] < 0.01 < 0.5 < adamw["vertical_fraction_mean"]
        assert rows[f"gd[α={a}]"]["final_charge_drift"] < 0.1 * rows[f"adamw[α={a}]"]["final_charge_drift"]
    # Pesme et al.: small init → sparse (ℓ1-like) interpolator, large init → dense (ℓ2-like) one
    assert rows["gd[α=0.01]"]["final_recovery_error"] < 0.2 < 0.5 < rows["gd[α=1]"]["final_recovery_error"]


def _count_steps(n, bar):
    for _ in range(n):
        bar.update(1)
    bar.flush()
    return n


def test_worker_progress_moves_per_step():
    """Issue 17: the demo's bar moved once per finished run (it sat at 0/4800 for two minutes); worker
    processes now send their step counts to the parent's bar as they go."""
    from gaugemath.experiments._common import parallel_map, worker_progress

    class Bar:
        def __init__(self):
            self.n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    with worker_progress(bar) as remote:
        done = list(parallel_map(_count_steps, [(23, remote), (37, remote)], workers=2))
    assert sorted(done) == [23, 37] and bar.n == 60
