"""The grokking experiment and the demo (the README's main job)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from gaugemath.cli import main  # noqa: E402
from gaugemath.experiments import experiment  # noqa: E402
from gaugemath.experiments.grokking import dataset  # noqa: E402


def test_dataset_is_every_pair_once_split_by_seed():
    p = 7
    x_tr, y_tr, x_te, y_te = dataset(p, 0.4, seed=3)
    x = torch.cat([x_tr, x_te])
    assert len(x) == p * p and len({tuple(r) for r in x.tolist()}) == p * p
    assert torch.equal(torch.cat([y_tr, y_te]), (x[:, 0] + x[:, 1]) % p)
    assert (x[:, 2] == p).all() and len(x_tr) == round(0.4 * p * p)
    assert torch.equal(dataset(p, 0.4, seed=3)[0], x_tr) and not torch.equal(dataset(p, 0.4, seed=4)[0], x_tr)
    with pytest.raises(ValueError, match="train_fraction"):
        dataset(p, 0.0, seed=0)


def test_unknown_experiment_lists_the_choices(capsys):
    with pytest.raises(ValueError, match="choose from .*grokking"):
        experiment("nope")
    assert main(["experiment", "nope"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_short_run_writes_metrics_results_and_plot(tmp_path):
    """A few steps of both optimizers: same initialisation and split, DDCAdam's updates horizontal."""
    mod = experiment("grokking")
    cfg = mod.configure("cpu", modulus=11, d_model=16, d_ff=32, steps=20, eval_every=10, observe_every=10,
                        seeds=(0,))
    result = mod.run(cfg, tmp_path, show_progress=False)
    for name in ("config.json", "metrics.jsonl", "results.json", "grokking.png"):
        assert (tmp_path / name).stat().st_size > 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = {r["optimizer"]: r for r in records if r["step"] == 0}
    assert first["adamw"]["train_loss"] == first["ddcadam"]["train_loss"]  # same init, same data
    observed = {(r["optimizer"], r["step"]): r.get("vertical_fraction") for r in records}
    assert observed["ddcadam", 10] < 1e-4 < observed["adamw", 10] and observed["ddcadam", 20] is not None
    runs = {r["optimizer"]: r for r in result["runs"]}
    assert runs["ddcadam"]["vertical_fraction_mean"] < 1e-4 < runs["adamw"]["vertical_fraction_mean"]
    assert "| adamw |" in result["table"] and "| ddcadam |" in result["table"]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert [r["optimizer"] for r in summary["summary"]] == ["adamw", "ddcadam"]


@pytest.mark.slow
def test_cli_experiment_with_muon_and_ddcmuon(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["experiment", "grokking", "--steps", "10", "--seeds", "1", "--optimizers", "muon", "ddcmuon",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| muon |" in text and "| ddcmuon |" in text and (out / "grokking.png").exists()


@pytest.mark.slow
def test_demo_cpu_default_groks_with_ddcadam(tmp_path, capsys):
    """The README's main job at its CPU default (several minutes on 2 cores)."""
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = {r["optimizer"]: r for r in json.loads((tmp_path / "results.json").read_text())["summary"]}
    assert rows["ddcadam"]["grokked"] >= 1 and rows["ddcadam"]["final_test_acc"] > 0.9
    assert rows["ddcadam"]["vertical_fraction"] < 1e-4 < rows["adamw"]["vertical_fraction"]


def test_cli_options_override_the_config_and_unknown_ones_are_named(capsys):
    cfg = experiment("grokking").configure("paper", depth=24, modulus=97)
    assert (cfg.depth, cfg.modulus, cfg.steps) == (24, 97, 20000)
    assert main(["experiment", "grokking", "-o", "widht=3", "--no-progress"]) == 2
    assert "unknown option(s) widht" in capsys.readouterr().err
