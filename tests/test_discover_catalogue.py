"""The catalogue is rediscovered from its own reference layers, and the ``discover`` CLI."""

from __future__ import annotations

import time

import pytest

from gaugemath.cli import main
from gaugemath.discovery.rediscover import rediscover


@pytest.mark.parametrize("name, options", [
    ("relu_rescale", {}),
    ("swiglu_rescale", {}),
    ("norm_scale", {"kind": "rmsnorm"}),
    ("norm_scale", {"kind": "producer_rmsnorm"}),
])
def test_catalogue_gauge_is_reproduced(name, options):
    alg, cmp = rediscover(name, **options)
    assert alg.complete and cmp.equal, cmp.describe()


def test_layernorm_gain_finds_more_than_the_catalogue():
    """LayerNorm's centred output has Σ n_i = 0, which gives two more (proved) mixing directions at d = 2."""
    alg, cmp = rediscover("norm_scale", kind="layernorm")
    assert alg.complete and cmp.contained and (cmp.catalogue_dim, cmp.discovered_dim) == (2, 4)


def test_rope_rotation_plus_plane_rescale():
    """With RoPE the catalogue keeps SO(2) per plane; discovery also finds the Q/K plane rescale."""
    alg, cmp = rediscover("head_rotation")
    assert alg.complete and cmp.contained and cmp.discovered_dim == 2 * cmp.catalogue_dim
    kinds = sorted(f.describe() for f in alg.families)
    assert kinds == ["rotate: W_Q[2k:2k+2, :] rotated by -φ, W_K[2k:2k+2, :] rotated by -φ",
                     "scale: W_Q[2k:2k+2, :]·α, W_K[2k:2k+2, :]·α^-1"]
    assert alg.abelian


@pytest.mark.slow
def test_ce_shift_reproduced_up_to_field_dependent_shifts():
    alg, cmp = rediscover("ce_shift")
    assert alg.complete and cmp.contained and cmp.reduced_equal and alg.orbit_dim() == 3


@pytest.mark.slow
@pytest.mark.parametrize("mlp, norm", [("swiglu", "rmsnorm"), ("relu", "rmsnorm")])
def test_transformer_block_rediscovered_under_60s(mlp, norm):
    t0 = time.perf_counter()
    alg, cmp = rediscover("transformer_block", mlp=mlp, norm_kind=norm)
    seconds = time.perf_counter() - t0
    assert cmp.contained, cmp.describe()
    assert seconds < 60, f"discovery took {seconds:.1f} s"


def test_cli_discover_layer_file(tmp_path, capsys):
    cert, out = tmp_path / "reglu.md", tmp_path / "code"
    rc = main(["discover", "examples/layers/reglu.py", "-o", "d_model=2", "-o", "hidden=2",
               "--certificate", str(cert), "--backend-dir", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "dim = 4" in text and "complete" in text and "Q[scale0[0]]" in text
    assert "Status: **PROVED**" in cert.read_text()
    # ReGLU's gate and up rescales both scale W_down[:, k]: the backends apply one, the other is reported
    assert "W_up[k, :]·α, W_down[:, k]·α^-1: not bound: overlaps" in text
    code = (out / "reglu_torch.py").read_text()
    assert "def _reglu__scale0__frame" in code and "scale1" not in code
    assert "jnp" in (out / "reglu_jax.py").read_text()


def test_cli_discover_torch_module_writes_importable_checked_backends(tmp_path, capsys):
    """``--torch file.py:factory``: a plain nn.Module discovered at its WIDTHS; the backend files import from any
    directory (absolute runtime import) and ``--check`` passes on them and fails once one is edited; the
    certificate states the declared assumptions and how it is re-derived."""
    import importlib.util

    source = "examples/modules/scaled_mlp.py:ScaledMLP"
    args = ["discover", "--torch", source, "--loss", "cross_entropy"]
    cert, out = tmp_path / "cert.md", tmp_path / "code"
    assert main(args + ["--certificate", str(cert), "--backend-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dim = 3*h + 1 (fits every instance)" in text
    assert "scale: s[k, :]·α, fc2_weight[:, k]·α^-1: not bound: overlaps" in text
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["ScaledMLP_jax.py", "ScaledMLP_torch.py"]
    for p in written:
        spec = importlib.util.spec_from_file_location(f"discovered_{p.stem}", p)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert sorted(module.FAMILIES) == ["ScaledMLP.scale0", "ScaledMLP.shift0.fc2_weight",
                                           "ScaledMLP.shift1.fc2_bias"]
        assert f"gaugemath discover --torch {source} --loss cross_entropy --backend-dir DIR --check" in p.read_text()
    assert main(args + ["--backend-dir", str(out), "--check"]) == 0
    (out / "ScaledMLP_torch.py").write_text(written[1].read_text() + "# edited\n")
    assert main(args + ["--backend-dir", str(out), "--check"]) == 1
    body = cert.read_text()
    assert "Status: **PROVED**" in body and "## Declared assumptions" in body
    assert f"re-derived by `gaugemath discover --torch {source} --loss cross_entropy`" in body
    assert "gaugemath prove --check" not in body


def test_cli_discover_catalogue_and_errors(tmp_path, capsys):
    assert main(["discover", "catalogue:relu_rescale"]) == 0
    assert "reproduced: same algebra" in capsys.readouterr().out
    bad = tmp_path / "bad.py"
    bad.write_text("import sympy as sp\nfrom gaugemath.discovery import layer\n"
                   "W = sp.MatrixSymbol('W', 2, 2)\nx = sp.MatrixSymbol('x', 2, 1)\n"
                   "layer = layer('bad', [W], [x], (W * x).applyfunc(sp.Function('g')))\n")
    assert main(["discover", str(bad)]) == 2
    assert "function 'g' is not declared" in capsys.readouterr().err
    assert main(["discover", str(tmp_path / "missing.py")]) == 2
