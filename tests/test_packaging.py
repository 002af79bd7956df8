"""The distribution installs edgeports.exporters / edgeports.runners (mapped from the top-level folders) and
nothing called `exporters` or `runners` at the top level; a non-editable wheel imports from outside the repo."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_import(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True)
    (wheel,) = (tmp_path / "dist").glob("edgeports-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "exporters" not in tops and "runners" not in tops, tops
    assert "edgeports/exporters/__init__.py" in names and "edgeports/runners/__init__.py" in names
    assert any(n.startswith("edgeports/models/zoo/") and n.endswith(".json") for n in names)
    # every package directory with an __init__.py in the repo made it into the wheel (no forgotten subpackage)
    for init in list((REPO / "edgeports").rglob("__init__.py")):
        rel = init.relative_to(REPO).as_posix()
        assert rel in names, f"{rel} missing from the wheel: add its package to pyproject's packages list"
    for top in ("exporters", "runners"):
        for init in (REPO / top).rglob("__init__.py"):
            rel = "edgeports/" + init.relative_to(REPO).as_posix()
            assert rel in names, f"{rel} missing from the wheel: add its package to pyproject's packages list"
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import edgeports, edgeports.exporters, edgeports.runners, edgeports.models as m; "
            f"assert edgeports.__file__.startswith({str(site)!r}), edgeports.__file__; "
            "assert m.zoo_names(); print('ok')")
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0]=[{str(site)!r}] + "
                          f"[p for p in {sys.path!r} if 'site-packages' in p]; " + code],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_test_file_basenames_are_unique():
    # tests/ has no __init__.py files: pytest's default import mode needs unique module basenames
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"test files sharing a basename: {dupes}"
