"""Every ```python block of README.md runs as written.

Each block runs on its own in a fresh interpreter (`sys.executable -c`),
with the repository root as working directory, as a reader would paste it.
A block whose run takes more than about 30 s is marked `slow` by an HTML
comment, invisible on the rendered page, on the line just above its fence:

    <!-- test: slow -->
    ```python
    ...
"""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import List, NamedTuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIMEOUT_S = 900

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
_SLOW = re.compile(r"^\s*<!--\s*test:\s*slow\s*-->\s*$")


class Block(NamedTuple):
  line: int   # 1-based line of the opening fence
  code: str
  slow: bool


def python_blocks(text: str) -> List[Block]:
  """The fenced blocks whose info string starts with `python`."""
  blocks = []
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    fence, info = m["fence"], m["info"].split()
    start, body = i, []
    i += 1
    while i < len(lines) and not (lines[i].strip().startswith(fence) and
                                  set(lines[i].strip()) == {fence[0]}):
      body.append(lines[i][len(m["indent"]):])
      i += 1
    i += 1  # the closing fence
    if info and info[0].lower() in ("python", "py"):
      slow = start > 0 and bool(_SLOW.match(lines[start - 1]))
      blocks.append(Block(start + 1, "\n".join(body) + "\n", slow))
  return blocks


def _block_id(block: Block) -> str:
  first = next((l.strip() for l in block.code.splitlines() if l.strip()), "")
  words = re.sub(r"[^A-Za-z0-9_.]+", "_", first).strip("_")[:48]
  return f"L{block.line}-{words}"


def _params():
  blocks = python_blocks(README.read_text(encoding="utf-8"))
  if not blocks:
    return [pytest.param(None, id="no-python-block")]
  return [pytest.param(b, id=_block_id(b),
                       marks=[pytest.mark.slow] if b.slow else [])
          for b in blocks]


def test_python_blocks_are_found():
  text = "\n".join([
      "```python", "a = 1", "```", "```bash", "ls", "```",
      "<!-- test: slow -->", "````py", "```python", "````",
      "  ```python title", "  b = 2", "  ```"])
  assert python_blocks(text) == [
      Block(1, "a = 1\n", False), Block(8, "```python\n", True),
      Block(11, "b = 2\n", False)]


@pytest.mark.parametrize("block", _params())
def test_readme_python_block_runs(block):
  if block is None:
    pytest.fail(f"{README} has no ```python block; the README's code "
                "examples are what this test runs.")
  # `-c` puts the working directory (the repository root) on sys.path.
  try:
    proc = subprocess.run([sys.executable, "-c", block.code], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
  except subprocess.TimeoutExpired as e:
    stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr
    pytest.fail(f"README.md line {block.line}: the block ran past "
                f"{TIMEOUT_S} s.\n--- stderr ---\n{stderr}")
  assert proc.returncode == 0, (
      f"README.md line {block.line}: the block exited {proc.returncode}.\n"
      f"--- block ---\n{block.code}--- stderr ---\n{proc.stderr[-6000:]}")
