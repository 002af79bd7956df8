"""`edgeports export` takes the model as a positional argument (the documented form) or as --model."""

import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgeports.cli", "export", *args], capture_output=True, text=True,
                          timeout=300)


def test_positional_model(tmp_path):
    out = run("--backend", "eager", "tiny-llama", "--out", str(tmp_path / "a"))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["spec"]["name"] == "tiny-llama"


def test_missing_or_conflicting_model_is_one_line_exit_2(tmp_path):
    for args in (("--backend", "eager"), ("--backend", "eager", "tiny-llama", "--model", "tiny-mamba")):
        out = run(*args, "--out", str(tmp_path / "b"))
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgeports: error:"), out.stderr
        assert not (tmp_path / "b").exists()
