"""The tutorial notebooks (notebooks/*.ipynb).

* every notebook runs top to bottom on its smoke setting (``PIXELKIT_SMOKE=1``) in a fresh
  Jupyter kernel of this interpreter, with a time limit per cell and per notebook; the
  executed notebook stays in memory (nothing is written back into notebooks/);
* committed notebooks carry no outputs, execution counts or execution metadata;
* notebooks hold no model, training or metric logic of their own (no ``def`` / ``class``,
  no optimiser, no ``.backward(``): they call pixelkit;
* each starts with one parameters cell that reads ``PIXELKIT_SMOKE``, and the README lists
  every notebook.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Limits for a loaded 2-core CI box; the smoke runs take 20-80 s each there.
CELL_TIMEOUT_S = 300
NOTEBOOK_TIMEOUT_S = 480

# Model / training / metric logic that belongs in pixelkit, not in a notebook.
FORBIDDEN = [
    (re.compile(r"^\s*(async\s+)?def\s", re.MULTILINE), "a function definition"),
    (re.compile(r"^\s*class\s", re.MULTILINE), "a class definition"),
    (re.compile(r"torch\.optim"), "an optimiser"),
    (re.compile(r"\.backward\("), "a backward pass"),
    (re.compile(r"nn\.Module"), "a module definition"),
]


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The kernels' environment: smoke setting, offline, outputs in a temporary folder.

    ``PYTHONPYCACHEPREFIX``: where ``PYTHONDONTWRITEBYTECODE`` is set (as on some CI boxes),
    every kernel would compile torch / lightning / transformers from source again (~20 s
    each); bytecode goes to a cache in the temp folder instead, never into the source tree.
    """
    out = tmp_path_factory.mktemp("notebook-outputs")
    return {"PIXELKIT_SMOKE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "PIXELKIT_NOTEBOOK_OUT": str(out),
            "PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / "pixelkit-pycache")}


def _execute(nb: nbformat.NotebookNode, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
             timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run a notebook in memory in a ``python3`` kernel (this interpreter) with cwd notebooks/."""
    from nbclient import NotebookClient

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    # startup_timeout: a kernel imports slowly on a loaded machine (nbclient's default: 60 s).
    client = NotebookClient(nb, timeout=timeout, startup_timeout=CELL_TIMEOUT_S,
                            kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    return nb


def test_the_notebooks_are_those_the_readme_lists() -> None:
    """Every notebook present is in the README's table and every one listed is present,
    each numbered ``NN_`` with no number used twice (numbers need not be consecutive: a
    notebook of another branch may be missing here)."""
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    listed = set(re.findall(r"`(\d\d_\w+\.ipynb)`", readme))
    assert listed == {p.name for p in NOTEBOOKS}
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert all(re.fullmatch(r"\d\d_\w+\.ipynb", p.name) for p in NOTEBOOKS)
    assert len(set(numbers)) == len(numbers), numbers


def test_kernel_is_this_interpreter(kernel_env: dict[str, str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``python3`` resolves to the interpreter running the tests (the venv's ipykernel)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, sys; print(sys.executable); print(os.getcwd()); "
        "print(os.environ['PIXELKIT_SMOKE'])")])
    _execute(nb, kernel_env, monkeypatch)
    exe, cwd, smoke = nb.cells[0].outputs[0]["text"].split()
    assert Path(exe).resolve() == Path(sys.executable).resolve()
    assert Path(cwd).resolve() == NOTEBOOK_DIR.resolve() and smoke == "1"


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke_setting(path: Path, kernel_env: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    committed = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    _execute(nb, kernel_env, monkeypatch)  # raises CellExecutionError with the traceback
    seconds = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 1, f"{path.name} drew no picture"
    # Executed in memory: the committed file and the folder are untouched.
    assert path.read_bytes() == committed
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them (nbstripout)"
        assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        assert "execution" not in cell.metadata, f"{path.name} cell {i} has execution timings"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_no_logic_of_its_own(path: Path) -> None:
    for i, cell in enumerate(_code_cells(path)):
        for pattern, what in FORBIDDEN:
            assert not pattern.search(cell.source), (
                f"{path.name} code cell {i} has {what}: put it in pixelkit (e.g. "
                "pixelkit/tutorial.py) with a test, and call it from the notebook")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_starts_with_one_parameters_cell(path: Path) -> None:
    cells = _code_cells(path)
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), "first code cell is not tagged"
    assert 'os.environ.get("PIXELKIT_SMOKE", "0") == "1"' in first.source
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1
    assert all("PIXELKIT_SMOKE" not in c.source for c in cells[1:]), \
        "only the parameters cell reads PIXELKIT_SMOKE"


def test_readme_lists_every_notebook() -> None:
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    for path in NOTEBOOKS:
        assert path.name in readme, path.name


def test_notebooks_import_pixelkit_not_private_helpers() -> None:
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in _code_cells(path))
        assert "pixelkit" in source
        assert not re.search(r"from pixelkit\S* import _|pixelkit\.\S*\._", source), path.name
