"""Installs that stay green: the lock files, the core without its extras, and the wheel.

* The lock files agree with pyproject.toml (``make lock`` is the only way versions move).
* The core (``import pixelkit``, ``pixelkit fit``, the ``Predictor``, ``pixelkit eval --task
  refer|trace``) runs where gradio, wandb, pycocoevalcap, matplotlib and pandas cannot be
  imported: a real environment without them, not a mock (the min-versions job runs this
  test in its own core-only environment too).
* ``pip install pixelkit-*.whl`` in a fresh environment outside the repository gives a
  working ``pixelkit quickstart --smoke``, packaged configs and ``pixelkit demo``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest
from _servers import free_port, start, stop, wait_until_serving
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
#: Distributions of the optional extras (pixelkit/optional.py) that the core must not need.
EXTRA_DISTRIBUTIONS = ("gradio", "gradio-client", "wandb", "pycocoevalcap", "matplotlib",
                       "pandas", "jupyter")
EXTRA_MODULES = ("gradio", "gradio_client", "wandb", "pycocoevalcap", "matplotlib", "pandas")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **extra}


# --------------------------------------------------------------------------- the lock files


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not installed (make setup installs it into .venv)")
    return uv


def _requirement_bounds(reqs: list[str]) -> dict[str, str]:
    """``{"torch": "2.6", ...}``: the ``>=`` lower bound of each requirement."""
    out = {}
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", req)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(3)
    return out


def test_lock_files_match_pyproject() -> None:
    """uv.lock, requirements/lock.txt and requirements/min.txt are what pyproject says."""
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python >= 3.11")
    uv = _uv()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # uv.lock satisfies pyproject.toml (uv's own check; no index needed).
    _run([uv, "lock", "--check", "--offline"], cwd=REPO)
    # requirements/lock.txt (environment.yml installs it) is exported from uv.lock.
    exported = _run([uv, "export", "-q", "--frozen", "--all-extras", "--no-emit-project",
                     "--no-hashes"], cwd=REPO).stdout
    body = [ln for ln in exported.splitlines() if not ln.startswith("#")]
    committed = [ln for ln in (REPO / "requirements" / "lock.txt").read_text().splitlines()
                 if not ln.startswith("#")]
    assert body == committed, "requirements/lock.txt is stale: run `make lock`"
    # requirements/min.txt pins every lower bound exactly (the min-versions job's versions).
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)",
                           (REPO / "requirements" / "min.txt").read_text(), re.M))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    wanted = _requirement_bounds(pyproject["project"]["dependencies"]
                                 + pyproject["dependency-groups"]["test"])
    assert {"torch", "torchvision", "transformers", "lightning", "peft", "timm"} <= set(wanted)
    for name, version in wanted.items():
        assert name in pins and Version(pins[name]) == Version(version), (
            f"requirements/min.txt has {name}=={pins.get(name)}, pyproject's lower bound is "
            f"{version}: run `make lock`")
    # The lowest torch is 2.6 or older (what GPU clusters run), unless the code needs more.
    assert tuple(int(v) for v in wanted["torch"].split(".")[:2]) <= (2, 6)
    # The uv that runs the lock is the pinned one (make setup bootstraps that version).
    pinned = re.search(r'"uv==([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert _run([uv, "--version"]).stdout.split()[1] == pinned


# --------------------------------------------------------------------------- the core alone


def _core_only_python(tmp_path: Path) -> Path:
    """A Python that has every installed package except the extras' distributions.

    Where none of the extras is installed (the min-versions job) that is this interpreter.
    Otherwise a new venv whose site-packages is a view (symlinks) of this one without the
    extras' files, so ``import gradio`` really finds nothing, metadata included.
    """
    if not any(_installed(d) for d in EXTRA_DISTRIBUTIONS):
        return Path(sys.executable)
    site = Path(sysconfig.get_path("purelib"))
    excluded: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if dist.metadata["Name"].lower().replace("_", "-") in EXTRA_DISTRIBUTIONS:
            excluded |= {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}
    assert excluded
    view = tmp_path / "site-view"
    view.mkdir()
    for entry in site.iterdir():
        if entry.name not in excluded and not entry.name.endswith(".pth"):
            (view / entry.name).symlink_to(entry)
    env_dir = tmp_path / "core-env"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    (Path(purelib.stdout.strip()) / "core-view.pth").write_text(f"{view}\n")
    return python


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


CORE_SCRIPT = textwrap.dedent("""
    import contextlib, importlib, io, json, sys
    from pathlib import Path

    for name in {extras!r}:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        raise SystemExit(f"{{name}} is importable in the core-only environment")

    from pixelkit import Predictor
    from pixelkit.cli import main
    from pixelkit.data import catalog

    def cli(*argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(list(argv))
        return code, err.getvalue()

    assert cli("synth", "--out", "data/shapes", "--num-images", "24", "--seed", "0")[0] == 0
    # Two training steps of the packaged caption config: its W&B logger falls back to CSV.
    assert cli("fit", "--config", "caption", "--trainer.max_steps", "2",
               "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
               "--trainer.enable_progress_bar", "false", "--data.batch_size", "4",
               "--data.samples_per_epoch", "8", "--data.val_limit", "4")[0] == 0
    ckpt = Path("runs/caption/checkpoints/last.ckpt")
    assert ckpt.is_file() and Path("runs/caption/csv/metrics.csv").is_file()

    val, root = catalog.get("shapes/val"), "data/shapes"
    images = str(val.image_dir(root))
    p = Predictor.from_checkpoint(ckpt)
    p.set_image(sorted(val.image_dir(root).glob("*.png"))[0])
    cap, ref = p.caption(), p.refer("the red circle")
    assert len(ref.box) == 4 and len(cap.points) == len(cap.words)

    for task in ("refer", "trace"):
        code, err = cli("eval", "--task", task, "--ckpt", str(ckpt), "--ann",
                        str(val.annotation(task, root)), "--images", images,
                        "--out", f"{{task}}.json", "--no-progress", "--limit", "4")
        assert code == 0, err
        assert json.loads(Path(f"{{task}}.json").read_text())
    # What needs an extra says which one, in one line, exit status 2.
    code, err = cli("eval", "--task", "caption", "--ckpt", str(ckpt), "--ann",
                    str(val.annotation("caption", root)), "--images", images,
                    "--no-progress", "--limit", "2")
    assert code == 2 and "pixelkit[metrics]" in err and len(err.strip().splitlines()) == 1, err
    code, err = cli("demo", "--ckpt", str(ckpt))
    assert code == 2 and "pixelkit[demo]" in err and len(err.strip().splitlines()) == 1, err
    loaded = sorted(set({extras!r}) & set(sys.modules))
    assert not loaded, f"the core imported {{loaded}}"
    print("CORE-ONLY OK")
""")


def test_core_runs_without_the_extras(tmp_path: Path) -> None:
    python = _core_only_python(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([str(python), "-c", CORE_SCRIPT.format(extras=EXTRA_MODULES)],
                          cwd=work, capture_output=True, text=True, timeout=900,
                          env=_offline_env(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and "CORE-ONLY OK" in proc.stdout, \
        f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "wandb is not installed: logging to CSV only" in proc.stdout


# --------------------------------------------------------------------------- the wheel


@pytest.mark.slow
@pytest.mark.extra("gradio")
def test_wheel_installs_and_runs_outside_the_repo(tmp_path: Path) -> None:
    """``pip install pixelkit-*.whl[all]`` in a fresh venv: quickstart, configs, demo."""
    uv = _uv()
    dist = tmp_path / "dist"
    # The build backend (setuptools, in the dev group) from this environment: no index.
    _run([uv, "build", "--wheel", "--no-build-isolation", "--python", sys.executable,
          "--out-dir", dist, REPO])
    wheel = next(dist.glob("pixelkit-*.whl"))
    env_dir = tmp_path / "venv"
    # The locked dependencies with every extra, exactly uv.lock's, from uv's cache (filled
    # by make setup): offline. (Not `uv pip install wheel[all]`: that resolves against the
    # index's listings, which `uv sync` never fetches, so a fresh machine has none cached.)
    _run([uv, "sync", "-q", "--locked", "--offline", "--all-extras", "--no-dev",
          "--no-install-project", "--python", sys.executable], cwd=REPO,
         env=_offline_env(UV_PROJECT_ENVIRONMENT=str(env_dir)))
    # Then the wheel alone; what it requires must be what was installed.
    _run([uv, "pip", "install", "-q", "--offline", "--no-deps", "--python",
          env_dir / "bin" / "python", wheel], env=_offline_env())
    _run([uv, "pip", "check", "--python", env_dir / "bin" / "python"], env=_offline_env())
    user = tmp_path / "user"  # a folder outside the repository
    user.mkdir()
    env = _offline_env()
    bin_ = env_dir / "bin"
    where = _run([bin_ / "python", "-c", "import pixelkit; print(pixelkit.__file__)"],
                 cwd=user, env=env).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
    # A packaged config by name, from the wheel.
    printed = _run([bin_ / "pixelkit", "fit", "--config", "trace", "--print_config"],
                   cwd=user, env=env).stdout
    assert "pixelkit.stages.TraceTraining" in printed
    _run([bin_ / "pixelkit", "quickstart", "--smoke", "--out", "qs"], cwd=user, env=env)
    ckpt = user / "qs" / "checkpoints" / "pixelllm.ckpt"
    assert ckpt.is_file() and (user / "qs" / "report.md").is_file()
    port, log = free_port(), tmp_path / "demo.log"
    server = start([bin_ / "pixelkit", "demo", "--ckpt", ckpt, "--port", str(port),
                    "--examples", "2"], log, env=env, cwd=user)
    try:
        page = wait_until_serving(f"http://127.0.0.1:{port}/", server, log)
        assert b"gradio" in page.lower()
    finally:
        stop(server)
