"""Tests of `launch.py` as a user runs it: signals, bad input, plain Orbax.

Every case is a real subprocess. The expensive part (JAX import and the tiny
model's compilation) is shared: one training run is pre-empted with SIGTERM,
then every other command runs at once against its work directory.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest

import launch_helpers  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import organamnist
from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import train
# pylint: enable=g-import-not-at-top,wrong-import-position

TINY = ["--config", "configs/organamnist.py:tiny",
        "--config.data.name=organamnist_small"]
TIMEOUT = 420


def _env():
  return launch_helpers.launch_env()


def _launch(workdir, *args):
  return [sys.executable, str(REPO / "launch.py"), "--workdir", str(workdir),
          *args]


# ---------------------------------------------------------------- pre-emption


@pytest.fixture(scope="module", name="preempted")
def fixture_preempted(tmp_path_factory):
  """A long run of the tiny config, sent SIGTERM once it logs step 2."""
  workdir = tmp_path_factory.mktemp("preempted")
  cmd = _launch(workdir, *TINY, "--config.training.num_train_steps=100000",
                "--config.training.log_every=1",
                "--config.training.checkpoint_every=0",
                "--config.training.sample_every=0")
  with open(workdir.parent / "preempted.err", "w+") as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=err, text=True)
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    out, signalled_at = [], None
    for line in proc.stdout:
      out.append(line)
      m = re.match(r"jaxdiff: step (\d+)/", line)
      if m and int(m.group(1)) >= 2:
        signalled_at = int(m.group(1))
        proc.send_signal(signal.SIGTERM)
        break
    rest, _ = proc.communicate()
    watchdog.cancel()
    err.seek(0)
    stderr = err.read()
  return dict(workdir=workdir, rc=proc.returncode, stdout="".join(out) + rest,
              stderr=stderr, signalled_at=signalled_at)


def _stopped_step(preempted) -> int:
  m = re.search(r"stopped by signal at step (\d+); checkpoint saved",
                preempted["stdout"])
  assert m, preempted["stdout"][-2000:] + preempted["stderr"][-2000:]
  return int(m.group(1))


@pytest.mark.slow
def test_sigterm_finishes_step_saves_and_exits_zero(preempted):
  assert preempted["signalled_at"] is not None, preempted["stderr"][-3000:]
  assert preempted["rc"] == 0, preempted["stderr"][-3000:]
  step = _stopped_step(preempted)
  assert step >= preempted["signalled_at"]
  with ckpt_lib.Checkpointer(preempted["workdir"] / "checkpoints") as ckpt:
    assert ckpt.all_steps() == [step]  # checkpoint_every=0: only this one.
    assert int(ckpt.restore_raw()["step"]) == step
  with open(preempted["workdir"] / "metrics.jsonl") as f:
    logged = [json.loads(l)["step"] for l in f if l.strip()]
  assert logged == list(range(1, step + 1))  # Every finished step, once.
  assert "Traceback" not in preempted["stderr"]


# ------------------------------------------------ everything else, at once

_SNIPPET = '''
import orbax.checkpoint as ocp
mngr = ocp.CheckpointManager("/path/to/workdir/checkpoints")
ckpt = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
params, ema_params, step = ckpt["state"]["params"], ckpt["state"]["ema_params"], ckpt["state"]["step"]
'''

_SNIPPET_REPORT = textwrap.dedent('''
    import json, sys
    import jax
    shapes = lambda t: {jax.tree_util.keystr(p): list(l.shape) for p, l in
                        jax.tree_util.tree_flatten_with_path(t)[0]}
    print(json.dumps(dict(
        step=int(step), params=shapes(params), ema_params=shapes(ema_params),
        jaxdiff=sorted(m for m in sys.modules if m.startswith("jaxdiff")))))
''')


class _Evil:
  """Unpickling this would create a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def _bad_data_dirs(root: pathlib.Path):
  empty = root / "empty"
  empty.mkdir()
  garbage = root / "garbage"
  (garbage / "medmnist").mkdir(parents=True)
  truncated = garbage / "medmnist" / "organamnist.npz"  # An interrupted copy.
  np.savez(truncated, train_images=np.zeros((64, 28, 28), np.uint8),
           train_labels=np.zeros((64, 1), np.uint8))
  truncated.write_bytes(truncated.read_bytes()[:3000])
  pickled = root / "pickled"
  (pickled / "medmnist").mkdir(parents=True)
  marker = root / "UNPICKLED"
  np.savez(pickled / "medmnist" / "organamnist.npz",
           train_images=np.array([_Evil(str(marker))], dtype=object),
           train_labels=np.zeros((1, 1), np.uint8))
  return empty, garbage, pickled, marker


@pytest.fixture(scope="module", name="runs")
def fixture_runs(preempted, tmp_path_factory):
  """Runs every other command concurrently; {name: (rc, stdout, stderr)}."""
  root = tmp_path_factory.mktemp("cli")
  work = preempted["workdir"]
  step = _stopped_step(preempted)
  empty, garbage, pickled, marker = _bad_data_dirs(root)
  resumed = root / "resumed"
  shutil.copytree(work, resumed)
  fresh = lambda name: root / name
  snippet = (_SNIPPET.replace("/path/to/workdir", str(work)) +
             _SNIPPET_REPORT)
  commands = {
      "unknown_key": _launch(fresh("a"), *TINY,
                             "--config.training.batchsize=8"),
      "wrong_type": _launch(fresh("b"), *TINY,
                            "--config.training.batch_size=abc"),
      "missing_data": _launch(fresh("c"), *TINY,
                              "--config.data.name=organamnist",
                              f"--config.data.data_dir={empty}"),
      "malformed_data": _launch(fresh("d"), *TINY,
                                "--config.data.name=organamnist",
                                f"--config.data.data_dir={garbage}"),
      "pickled_data": _launch(fresh("e"), *TINY,
                              "--config.data.name=organamnist",
                              f"--config.data.data_dir={pickled}"),
      "unknown_mode": _launch(fresh("f"), *TINY, "--mode=foo"),
      "unknown_sampler": _launch(fresh("g"), *TINY,
                                 "--config.sampling.method=foo"),
      "sample_untrained": _launch(fresh("h"), *TINY, "--mode=sample"),
      "other_shape": _launch(work, *TINY, "--mode=sample",
                             "--config.model.kwargs.ch=16"),
      "sample": _launch(work, *TINY, "--mode=sample"),
      "resume": _launch(resumed, *TINY,
                        f"--config.training.num_train_steps={step + 2}",
                        "--config.training.log_every=1",
                        "--config.training.sample_every=0"),
      "snippet": [sys.executable, "-c", snippet],
  }
  procs = {name: subprocess.Popen(
      cmd, cwd=REPO if name != "snippet" else root, env=_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, cmd in commands.items()}
  results = {}
  for name, proc in procs.items():
    try:
      out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
    results[name] = (proc.returncode, out, err)
  results["_marker"] = marker
  results["_resumed"] = resumed
  return results


def _last_line(text: str) -> str:
  lines = [l for l in text.splitlines() if l.strip()]
  return lines[-1] if lines else ""


_ERRORS = {
    "unknown_key": r"Unknown config key --config\.training\.batchsize \(did "
                   r"you mean 'batch_size'\?\)\. See --helpfull .* "
                   r"configs/base\.py\.",
    "wrong_type": r"flag --config\.training\.batch_size=abc: invalid literal "
                  r"for int\(\) with base 10: 'abc'\. See --helpfull .* "
                  r"configs/base\.py\.",
    "missing_data": r"organamnist: missing organamnist\.npz in .*empty/"
                    r"medmnist\. Put the file\(s\) in .*",
    "malformed_data": r".*organamnist\.npz: not a readable npz archive .*; "
                      r"delete it and download it again\.",
    "pickled_data": r".*organamnist\.npz: cannot read without unpickling .*"
                    r"jaxdiff refuses to load\. Use the official MedMNIST "
                    r"npz\.",
    "unknown_mode": r"Unknown --mode 'foo'; use one of: train, sample, .*",
    "unknown_sampler": r"Unknown sampler 'foo' \(config\.sampling\.method\); "
                       r"use one of .*\bddim\b.*\bddpm\b.*",
    "sample_untrained": r"No checkpoints in .*/h/checkpoints; train first "
                        r"with --mode train and the same --workdir\.",
    "other_shape": r"Checkpoint \d+ in .* does not fit this model: parameter "
                   r"'[^']+' has shape \(.*\) in the checkpoint but \(.*\) in "
                   r"the model\. Use the config it was trained with, or a "
                   r"fresh --workdir\.",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_ERRORS))
def test_bad_input_is_one_line_saying_what_to_do(runs, name):
  rc, _, err = runs[name]
  assert rc == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert re.fullmatch("jaxdiff: error: " + _ERRORS[name], _last_line(err)), (
      _last_line(err))


@pytest.mark.slow
def test_pickled_npz_is_never_unpickled(runs):
  assert runs["pickled_data"][0] == 2
  assert not os.path.exists(runs["_marker"])


@pytest.mark.slow
def test_sample_mode_writes_grid_and_npz(runs, preempted):
  rc, out, err = runs["sample"]
  assert rc == 0, err[-3000:]
  step = _stopped_step(preempted)
  assert f"jaxdiff: 8 samples from step {step} (ddpm, 8 steps)" in out
  with np.load(preempted["workdir"] / "samples_ddpm_8.npz",
               allow_pickle=False) as z:
    assert z["images"].shape == (8, 28, 28, 1)
    assert z["images"].dtype == np.uint8


@pytest.mark.slow
def test_resumed_run_continues_from_saved_step(runs, preempted):
  rc, out, err = runs["resume"]
  assert rc == 0, err[-3000:]
  step = _stopped_step(preempted)
  assert f"jaxdiff: resumed from step {step}." in out
  steps = re.findall(r"^jaxdiff: step (\d+)/", out, re.M)
  assert [int(s) for s in steps] == [step + 1, step + 2]
  with ckpt_lib.Checkpointer(runs["_resumed"] / "checkpoints") as ckpt:
    assert ckpt.latest_step() == step + 2


@pytest.mark.slow
def test_readme_orbax_snippet_reads_launch_checkpoint(runs, preempted):
  rc, out, err = runs["snippet"]
  assert rc == 0, err[-3000:]
  got = json.loads(_last_line(out))
  assert got["jaxdiff"] == []  # Plain Orbax: jaxdiff was never imported.
  assert got["step"] == _stopped_step(preempted)
  s = config_lib.typed(organamnist.get_config("tiny"))
  shapes = train.abstract_state(config_lib.build_model(s),
                                train.make_optimizer(s.training),
                                s.data.image_shape)
  want = {jax.tree_util.keystr(p): list(l.shape) for p, l in
          jax.tree_util.tree_flatten_with_path(shapes.params)[0]}
  assert got["params"] == want and got["ema_params"] == want


def test_no_unpickling_in_the_package():
  """Input files are parsed, never unpickled (see jaxdiff/data)."""
  pattern = re.compile(r"\bpickle\.loads?\(|allow_pickle\s*=\s*True|"
                       r"\bjoblib\.load\(|\btorch\.load\(")
  offenders = []
  for path in (REPO / "jaxdiff").rglob("*.py"):
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
  assert not offenders, offenders
