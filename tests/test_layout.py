"""The layering of jaxdiff holds: modes on top, libraries below, cheap configs.

- Nothing under `jaxdiff/` except `run.py` and `modes/` imports `jaxdiff.run`
  or `jaxdiff.modes`.
- The core modules (`CORE`: schedules, SDEs, the denoiser, time grids, the
  samplers) import no other part of jaxdiff.
- Loading any config file imports neither flax, JAX nor matplotlib.
- Every mode in `run.MODES` is a module of `jaxdiff/modes/` with `run`, and
  every module there is in the table.
- No file under `jaxdiff/` is longer than 500 lines, no function than 80.
"""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "jaxdiff"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _imports(path):
  """Names of the modules a file imports (absolute, `from x import y` as x.y)."""
  tree = ast.parse(path.read_text(), str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      for alias in node.names:
        yield f"{node.module}.{alias.name}"


# The core: pure diffusion math every library above builds on.
CORE = ("registry", "schedules", "sde", "denoiser", "grids", "samplers")


def _is_top_layer(path):
  rel = path.relative_to(PACKAGE)
  return rel.parts[0] == "modes" or rel.as_posix() == "run.py"


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if not _is_top_layer(p)],
    ids=lambda p: p.relative_to(REPO).as_posix())
def test_libraries_do_not_import_the_modes(path):
  bad = [name for name in _imports(path)
         if name == "jaxdiff.run" or name.startswith("jaxdiff.run.")
         or name == "jaxdiff.modes" or name.startswith("jaxdiff.modes.")]
  assert not bad, f"{path.name} imports {bad}: the modes are the top layer."


@pytest.mark.parametrize("name", CORE)
def test_core_modules_import_only_the_core(name):
  path = PACKAGE / f"{name}.py"
  # `from jaxdiff import sde` yields "jaxdiff" and "jaxdiff.sde".
  bad = sorted({n for n in _imports(path) if n.startswith("jaxdiff.")
                and n.split(".")[1] not in CORE})
  assert not bad, f"{path.name} imports {bad}: the core imports only {CORE}."


@pytest.mark.parametrize("config", sorted(
    p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py"))
def test_loading_a_config_imports_no_jax_flax_or_matplotlib(config):
  code = (
      "import sys\n"
      f"from configs import {config[:-3]} as c\n"
      "c.get_config()\n"
      "print(sorted(m for m in ('jax', 'flax', 'matplotlib', 'optax') "
      "if m in sys.modules))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                       capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.stdout.strip() == "[]", out.stdout


def test_mode_table_matches_the_modes_package():
  from jaxdiff import run  # pylint: disable=g-import-not-at-top
  files = {p.stem for p in (PACKAGE / "modes").glob("*.py")
           if p.stem != "__init__"}
  assert set(run.MODES) == files
  for name, module in run.MODES.items():
    assert module == f"jaxdiff.modes.{name}"
    assert callable(run.mode_fn(name))


@pytest.mark.parametrize("path", SOURCES,
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_files_and_functions_are_short(path):
  text = path.read_text()
  assert len(text.splitlines()) <= MAX_FILE_LINES, (
      f"{path.name} has {len(text.splitlines())} lines; split it by concern.")
  long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
          for node in ast.walk(ast.parse(text))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, f"{path.name}: functions too long: {long}"
