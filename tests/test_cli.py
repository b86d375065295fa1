"""The `gaugemath` command: list, derive, prove and prove --check (staleness detection)."""

import subprocess
import sys

import pytest

from gaugemath.cli import main


def test_list_names_every_gauge(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ce_shift", "relu_rescale", "swiglu_rescale", "norm_scale", "head_rotation", "transformer_block"):
        assert name in out


def test_derive_relu_shows_generator_metric_and_charge(capsys):
    assert main(["derive", "relu_rescale"]) == 0
    out = capsys.readouterr().out
    assert "Generators" in out and "G(θ) = diag(" in out
    assert "Q[scale[0]] = W_in[0,0]**2 + W_in[0,1]**2 - W_out[0,0]**2 - W_out[1,0]**2 + b_in[0]**2" in out


def test_derive_passes_options_and_reports_bad_ones(capsys):
    assert main(["derive", "relu_rescale", "-o", "hidden=1", "-o", "frame=anchor"]) == 0
    assert "anchor" in capsys.readouterr().out
    assert main(["derive", "nope"]) == 2
    assert "unknown gauge" in capsys.readouterr().err
    assert main(["derive", "relu_rescale", "-o", "frame=sideways"]) == 2
    assert "relu_rescale" in capsys.readouterr().err


def test_prove_writes_certificates_and_check_detects_staleness(tmp_path, capsys):
    out = tmp_path / "proofs"
    assert main(["prove", "ce_shift", "--out", str(out), "-j", "1"]) == 0
    text = (out / "ce_shift.md").read_text()
    assert "Status: **PROVED**" in text and "SymPy" in text and "**FAILED**" not in text
    assert main(["prove", "ce_shift", "--check", "--out", str(out), "-j", "1"]) == 0
    (out / "ce_shift.md").write_text(text.replace("proved", "assumed", 1))
    assert main(["prove", "ce_shift", "--check", "--out", str(out), "-j", "1"]) == 1
    assert "stale" in capsys.readouterr().err
    (out / "ce_shift.md").unlink()
    assert main(["prove", "ce_shift", "--check", "--out", str(out), "-j", "1"]) == 1


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "gaugemath", "list"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "head_rotation" in r.stdout


def test_codegen_check_passes_and_detects_a_stale_file(tmp_path, monkeypatch, capsys):
    from gaugemath import codegen

    assert main(["codegen", "--check"]) == 0
    stale = tmp_path / "_generated.py"
    stale.write_text(codegen.BACKENDS["torch"].read_text().replace("sq_W_out", "sq_W_in", 1))
    monkeypatch.setitem(codegen.BACKENDS, "torch", stale)
    monkeypatch.setattr(codegen, "ROOT", tmp_path)
    assert main(["codegen", "--check"]) == 1
    assert "stale or missing generated file" in capsys.readouterr().err


def test_verify_prints_one_line_per_construction_and_the_control(capsys):
    pytest.importorskip("torch")
    assert main(["verify", "--dtype", "float64", "--steps", "5", "relu_rescale", "head_rotation.rope"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["relu_rescale", "adamw:relu_rescale", "head_rotation.rope",
                                              "adamw:head_rotation.rope"]
    assert lines[0].endswith("PASS") and lines[1].endswith("FAIL (expected)")
    assert float(lines[0].split()[1]) < 1e-12


def test_help_is_current_and_lists_valid_names(capsys):
    """Issue 17: the top-level help was stale (raw RST backticks, subcommands missing), and derive/prove/
    experiment did not say which names they take."""
    import pytest

    from gaugemath.cli import main

    for argv, wanted in ((["--help"], ["discover", "experiment", "demo", "verify"]),
                         (["derive", "--help"], ["relu_rescale", "head_rotation"]),
                         (["prove", "--help"], ["transformer_block"]),
                         (["experiment", "--help"], ["grokking", "overtrain"]),
                         (["verify", "--help"], ["1e-12", "freeze"])):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert all(w in out for w in wanted), (argv, out)
        assert "``" not in out and "ddc.md" not in out, out
