"""Chaos run: a tiny training killed again and again must end as if it never was.

The tiny OrganAMNIST config (`configs/organamnist.py:tiny` on the bundled
`organamnist_small` subset, a checkpoint every 2 steps, a metrics record every
step, no sampling) is trained through `launch.py` in a subprocess that is
interrupted N times at seeded random moments, alternately by SIGTERM and by
SIGKILL (kill -9), and each time started again with the same command until it
finishes. The same config is then trained without interruption in another
work directory. The run passes when

* the final state (params, EMA params, optimiser state, step) of the
  interrupted run equals the uninterrupted run's bit for bit,
* after every attempt, every kept checkpoint restores (through
  `jaxdiff.checkpoint.Checkpointer`, which verifies the checksums, into
  `jaxdiff.train.abstract_state`), none is set aside as unreadable, and at
  the end each equals the uninterrupted run's checkpoint of the same step,
* `metrics.jsonl` holds every step exactly once, with the uninterrupted
  run's losses,
* every exit code is the expected one (SIGKILL: -9; SIGTERM: 0, or -15 when
  it arrives while Python and JAX are still importing, before the process
  has printed anything), no process hangs, no traceback is printed, and each
  resume starts from the step a SIGTERM saved.

The moments alternate in pairs between two kinds: "training" (after the
attempt has logged 1 to `max_new_steps` + 1 steps, plus a random fraction of
a second, so saves in progress are hit too) and "startup" (a random fraction
of the previous attempt's time to its first step: while importing, compiling
or restoring). The plan is a function of the seed; the seconds it maps to
depend on the machine's load and are recorded.

    python benchmarks/chaos.py                           # N = 20, 80 steps
    python benchmarks/chaos.py --interruptions 40 --steps 160 --seed 1
    python benchmarks/chaos.py --config.training.checkpoint_every=3

`--config path.py[:variant]` (default configs/organamnist.py:tiny) and
`--config.key=value` overrides are handed to launch.py as given, after the
chaos run's own settings (`overrides`: the bundled subset, a checkpoint
every 2 steps, ...), so they win; the number of steps is --steps. The
checks restore the state of the config parsed as launch.py parses it
(`run_config`). Another data set needs `--config.data.name=...`.

Each subprocess starts JAX anew; `JAX_COMPILATION_CACHE_DIR` (default
`$TMPDIR/jaxdiff_chaos_jit_cache`, kept between runs) shortens the restarts.
Writes --out (JSON), prints a summary and exits 1 if a check failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import files
from jaxdiff import train as train_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIG = "configs/organamnist.py:tiny"
DEFAULT_OUT = "benchmarks/results/chaos.json"
STEP_LINE = re.compile(r"jaxdiff: step (\d+)/(\d+)")
RESUMED_LINE = re.compile(r"jaxdiff: resumed from step (\d+)")
# "... at step 9; checkpoint saved" or "... before the first step; nothing
# new to save (checkpoint 8 ...)".
STOPPED_LINE = re.compile(r"stopped by signal (?:at step (\d+)|before the "
                          r"first step; nothing new to save \(checkpoint "
                          r"(\d+))")
# A SIGTERM before the handler is installed ends the process the default way.
EXPECTED_RC = {"SIGTERM": (0,), "SIGKILL": (-signal.SIGKILL,)}
STARTUP_SIGTERM_RC = -signal.SIGTERM


# ------------------------------------------------------------------ set-up


def overrides(steps: int) -> Dict[str, Any]:
  """The config keys the chaos run sets on top of its config file."""
  return {"data.name": "organamnist_small",
          "training.num_train_steps": steps,
          "training.checkpoint_every": 2,
          "training.log_every": 1,
          "training.sample_every": 0,
          "cpu_devices": 0}


def config_args(steps: int, config: str = CONFIG,
                extra: Sequence[str] = ()) -> List[str]:
  """launch.py's config arguments of a run: the file, the chaos settings
  (`overrides`), then the `--config.key=value` arguments `extra` (which
  win)."""
  return ["--config", config,
          *(f"--config.{k}={v}" for k, v in overrides(steps).items()),
          *extra]


def launch_command(workdir: str, steps: int, config: str = CONFIG,
                   extra: Sequence[str] = ()) -> List[str]:
  """The `launch.py` command line of a run (the same for every resume)."""
  return [sys.executable, os.path.join(ROOT, "launch.py"),
          *config_args(steps, config, extra), "--workdir", workdir]


def run_config(steps: int, config: str = CONFIG, extra: Sequence[str] = ()):
  """The ConfigDict that `launch_command` trains: its config arguments
  parsed by launch.py's parser (`jaxdiff.config.parse_config_args`)."""
  return config_lib.parse_config_args(config_args(steps, config, extra),
                                      root=ROOT)


def child_env(cache_dir: str) -> Dict[str, str]:
  """The subprocesses' environment: CPU, unbuffered, a persistent JIT cache
  that keeps even fast compilations, no multi-host settings."""
  env = dict(os.environ)
  env.update(PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  for k in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
            "JAX_PROCESS_ID", "JAXDIFF_DISTRIBUTED"):
    env.pop(k, None)
  return env


# -------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Interruption:
  """One planned interruption.

  Attributes:
    index: its number, from 0.
    signal: "SIGTERM" or "SIGKILL".
    moment: "training" (after `new_steps` + 1 logged steps, plus `fraction`
      x `jitter_s` seconds) or "startup" (`fraction` x the previous
      attempt's time to its first logged step after the start).
    new_steps: extra steps to wait for ("training").
    fraction: in [0, 1).
  """
  index: int
  signal: str
  moment: str
  new_steps: int
  fraction: float


def plan(n: int, seed: int, *, max_new_steps: int = 4
         ) -> List[Interruption]:
  """N interruptions: signals alternate TERM, KILL; moments alternate in
  pairs (training, training, startup, startup, ...), so each signal meets
  each moment; the steps and fractions are drawn from `seed`."""
  if n < 0 or max_new_steps < 0:
    raise ValueError(f"n ({n}) and max_new_steps ({max_new_steps}) must be "
                     ">= 0.")
  rng = random.Random(seed)
  out = []
  for i in range(n):
    out.append(Interruption(
        index=i, signal=("SIGTERM", "SIGKILL")[i % 2],
        moment=("training", "startup")[(i // 2) % 2],
        new_steps=rng.randint(0, max_new_steps), fraction=rng.random()))
  return out


# ---------------------------------------------------------------- attempts


class Attempt:
  """One `launch.py` subprocess; a thread reads and timestamps its stdout.

  stdout goes to `<log>.out` (each line prefixed by its seconds since the
  start), stderr to `<log>.err`.
  """

  def __init__(self, cmd: Sequence[str], env: Dict[str, str], log: str):
    self.log = log
    self._err = open(log + ".err", "w")
    self.t0 = time.monotonic()
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=self._err)
    self.lines: List[Tuple[float, str]] = []
    self.steps: List[Tuple[float, int]] = []  # (seconds, step) logged
    self._cond = threading.Condition()
    self._eof = False
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def _read(self):
    with open(self.log + ".out", "w") as out:
      for line in self.proc.stdout:
        t = self.elapsed()
        out.write(f"{t:8.3f} {line}")
        with self._cond:
          self.lines.append((t, line.rstrip("\n")))
          m = STEP_LINE.search(line)
          if m:
            self.steps.append((t, int(m.group(1))))
          self._cond.notify_all()
    with self._cond:
      self._eof = True
      self._cond.notify_all()

  def wait_for_steps(self, count: int, timeout: float) -> bool:
    """Waits until `count` steps are logged; False if stdout ended first."""
    with self._cond:
      self._cond.wait_for(lambda: len(self.steps) >= count or self._eof,
                          timeout=timeout)
      return len(self.steps) >= count

  def sleep(self, seconds: float) -> bool:
    """Sleeps; False (at once) if the process ends meanwhile."""
    try:
      self.proc.wait(timeout=max(seconds, 0.0))
      return False
    except subprocess.TimeoutExpired:
      return True

  def last_step(self) -> Optional[int]:
    with self._cond:
      return self.steps[-1][1] if self.steps else None

  def finish(self, timeout: float) -> Dict[str, Any]:
    """Waits for the exit (SIGKILL after `timeout` s: a hang) and returns
    what the attempt printed and its exit code."""
    hung = False
    try:
      rc = self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      hung = True
      self.proc.kill()
      rc = self.proc.wait()
    self._reader.join(timeout=30)
    self._err.close()
    with open(self.log + ".err", errors="replace") as f:
      stderr = f.read()
    text = "\n".join(line for _, line in self.lines)
    resumed = RESUMED_LINE.search(text)
    stopped = STOPPED_LINE.search(text)
    steps = [s for _, s in self.steps]
    return dict(
        rc=rc, hung=hung, wall_s=round(self.elapsed(), 3),
        first_step_s=round(self.steps[0][0], 3) if self.steps else None,
        steps_logged=[steps[0], steps[-1]] if steps else None,
        resumed_from=int(resumed.group(1)) if resumed else None,
        stopped_at=(int(stopped.group(1) or stopped.group(2)) if stopped
                    else None),
        traceback="Traceback" in stderr,
        error_lines=[l for l in stderr.splitlines()
                     if l.startswith("jaxdiff: error")][-3:],
        log=self.log)


def interrupted_attempt(cmd, env, log: str, it: Interruption, *,
                        startup_s: float, jitter_s: float,
                        timeout_s: float) -> Dict[str, Any]:
  """Runs `cmd` and interrupts it as `it` says.

  Returns:
    The attempt's record: the plan, `signal_s` (seconds after the start) and
    `last_step_before` (the last step logged before the signal; None if
    none), or `signalled=False` when the process ended first.
  """
  attempt = Attempt(cmd, env, log)
  if it.moment == "training":
    alive = attempt.wait_for_steps(it.new_steps + 1, timeout_s)
    alive = alive and attempt.sleep(it.fraction * jitter_s)
  else:
    alive = attempt.sleep(it.fraction * startup_s)
  signalled = alive and attempt.proc.poll() is None
  record = dict(dataclasses.asdict(it), signalled=signalled)
  if signalled:
    record["signal_s"] = round(attempt.elapsed(), 3)
    record["last_step_before"] = attempt.last_step()
    record["lines_before"] = len(attempt.lines)
    attempt.proc.send_signal(getattr(signal, it.signal))
  record.update(attempt.finish(timeout_s))
  return record


def plain_attempt(cmd, env, log: str, timeout_s: float) -> Dict[str, Any]:
  """Runs `cmd` to its end (killed after `timeout_s` s)."""
  return Attempt(cmd, env, log).finish(timeout_s)


def chaos_run(workdir: str, cmd: Sequence[str], target: train_lib.TrainState,
              interruptions: Sequence[Interruption], env: Dict[str, str],
              log_dir: str, *, jitter_s: float = 0.5, startup_s: float = 8.0,
              timeout_s: float = 300.0, echo: bool = True) -> Dict[str, Any]:
  """Trains in `workdir`, interrupted as planned, then resumed to the end.

  Args:
    workdir: the run's work directory.
    cmd: its `launch_command`.
    target: the abstract TrainState its checkpoints restore into
      (`target_state`).
    interruptions: the plan (`plan`).
    env: the subprocesses' environment (`child_env`).
    log_dir: where each attempt's stdout and stderr go.
    jitter_s: the longest extra wait after a "training" moment's steps.
    startup_s: the time to the first step assumed before one is measured.
    timeout_s: the longest wait for a step or an exit.
    echo: print a line per attempt.

  After every attempt each kept checkpoint is restored (`restore_check`:
  `kept`, `restore_errors` and `set_aside` in the attempt's record).

  Returns:
    {"command": the command line, "attempts": the interrupted attempts'
    records, "final": the last attempt's record (None if the run ended
    before the last interruption)}.
  """
  t_start = time.monotonic()
  attempts = []
  for it in interruptions:
    started_s = round(time.monotonic() - t_start, 3)
    record = interrupted_attempt(
        cmd, env, os.path.join(log_dir, f"attempt_{it.index:02d}"), it,
        startup_s=startup_s, jitter_s=jitter_s, timeout_s=timeout_s)
    record["started_s"] = started_s
    record["ended_s"] = round(time.monotonic() - t_start, 3)
    record.update(restore_check(workdir, target))
    attempts.append(record)
    if record["first_step_s"] is not None:
      startup_s = record["first_step_s"]
    if echo:
      print(f"  {attempt_line(record)}", flush=True)
    if not record["signalled"]:
      break  # The run ended on its own (finished or failed).
  final = None
  if all(a["signalled"] for a in attempts):
    final = plain_attempt(cmd, env, os.path.join(log_dir, "final"),
                          timeout_s)
    final["ended_s"] = round(time.monotonic() - t_start, 3)
    final.update(restore_check(workdir, target))
    if echo:
      print(f"  final: rc {final['rc']}, resumed from "
            f"{final['resumed_from']}, steps {final['steps_logged']}, "
            f"{final['wall_s']:.1f} s", flush=True)
  return dict(command=list(cmd), attempts=attempts, final=final)


def attempt_line(r: Dict[str, Any]) -> str:
  """One line of the summary table for an interrupted attempt."""
  where = (f"at {r['signal_s']:6.2f} s after start, last step "
           f"{r['last_step_before']}" if r["signalled"]
           else "not sent: the process had ended")
  return (f"#{r['index']:02d} {r['signal']:<7} {r['moment']:<8} {where}; "
          f"rc {r['rc']}, resumed from {r['resumed_from']}, "
          f"stopped at {r['stopped_at']}")


# ------------------------------------------------------------------ checks


def _leaves(tree) -> Dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def bit_differences(a, b) -> List[str]:
  """Names of the leaves in which two trees differ (structure, shape, dtype
  or any bit)."""
  la, lb = _leaves(a), _leaves(b)
  out = sorted(set(la) ^ set(lb))
  for name in sorted(set(la) & set(lb)):
    x, y = la[name], lb[name]
    if (x.shape != y.shape or x.dtype != y.dtype
        or x.tobytes() != y.tobytes()):
      out.append(name)
  return out


PARTS = ("params", "ema_params", "opt_state", "step", "nonfinite")


def target_state(config) -> train_lib.TrainState:
  """The abstract TrainState (shapes and dtypes) of a run of `config`."""
  s = config_lib.typed(config)
  return train_lib.abstract_state(
      config_lib.build_model(s), train_lib.make_optimizer(s.training),
      s.data.image_shape)


def restore_all(workdir: str, target: train_lib.TrainState
                ) -> Dict[str, Any]:
  """Every kept checkpoint of a workdir, restored one by one into `target`.

  Returns:
    {"steps": the kept steps, "states": {step: TrainState},
     "errors": {step: message}, "checksummed": the steps saved with
     checksums, "set_aside": folders named *.unreadable-*, "leftovers":
     other entries that are not step folders}.
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return dict(steps=[], states={}, errors={}, checksummed=[],
                set_aside=[], leftovers=[])
  states, errors = {}, {}
  with ckpt_lib.Checkpointer(directory) as ckpt:
    kept = ckpt.all_steps()
    for step in kept:
      try:
        state = ckpt.restore(target, step=step)
      except Exception as e:  # pylint: disable=broad-except
        errors[step] = f"{type(e).__name__}: {str(e).strip()[:300]}"
        continue
      if ckpt.unreadable:
        errors[step] = f"reported unreadable: {ckpt.unreadable}"
      elif int(state.step) != step:
        errors[step] = f"holds step {int(state.step)}"
      else:
        states[step] = state
  names = sorted(os.listdir(directory))
  return dict(steps=kept, states=states, errors=errors,
              checksummed=[k for k in kept if os.path.isdir(
                  os.path.join(directory, str(k), "checksums"))],
              set_aside=[n for n in names if ".unreadable-" in n],
              leftovers=[n for n in names if not n.isdigit()
                         and ".unreadable-" not in n])


def restore_check(workdir: str, target: train_lib.TrainState
                  ) -> Dict[str, Any]:
  """`restore_all` without the states: what an attempt left behind."""
  found = restore_all(workdir, target)
  return dict(kept=found["steps"], set_aside=found["set_aside"],
              restore_errors={str(k): v for k, v in found["errors"].items()})


def read_metrics(workdir: str) -> Tuple[List[Dict[str, Any]], List[str]]:
  """The records of `metrics.jsonl` and its lines that are not JSON."""
  records, bad = [], []
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return records, ["(no metrics.jsonl)"]
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        bad.append(line.rstrip("\n")[:200])
  return records, bad


def _check(passed: bool, detail: str, **extra) -> Dict[str, Any]:
  return dict(passed=bool(passed), detail=detail, **extra)


def check_interruptions(attempts: Sequence[Dict[str, Any]], n: int
                        ) -> Dict[str, Any]:
  """All N interruptions were delivered (none came after the run ended)."""
  delivered = sum(a["signalled"] for a in attempts)
  return _check(delivered == n, f"{delivered} of {n} interruptions delivered"
                + ("" if delivered == n else
                   "; the run ended first: raise --steps"))


def check_finished(final: Optional[Dict[str, Any]],
                   reference: Dict[str, Any], steps: int) -> Dict[str, Any]:
  """The last resume and the reference both ran to `steps` and exited 0."""
  bad = [f"{name}: rc {r and r['rc']}, steps {r and r['steps_logged']}"
         for name, r in (("final", final), ("reference", reference))
         if r is None or r["rc"] != 0 or r["hung"]
         or not r["steps_logged"] or r["steps_logged"][1] != steps]
  return _check(not bad, f"both runs reached step {steps} and exited 0"
                if not bad else "; ".join(bad))


def check_exit_codes(attempts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  """SIGKILL: -9; SIGTERM: 0, or -15 before the process printed anything
  (while importing, before the handler is installed); no hang."""
  counts, bad = {}, []
  for a in attempts:
    if not a["signalled"]:
      continue
    key = f"{a['signal']} -> {a['rc']}"
    counts[key] = counts.get(key, 0) + 1
    ok = a["rc"] in EXPECTED_RC[a["signal"]] or (
        a["signal"] == "SIGTERM" and a["rc"] == STARTUP_SIGTERM_RC
        and a["lines_before"] == 0)
    if not ok or a["hung"]:
      bad.append(f"#{a['index']} {key}" + (" (hung)" if a["hung"] else ""))
  return _check(
      not bad, ", ".join(f"{k}: {v}x" for k, v in sorted(counts.items()))
      + ("" if not bad else "; unexpected: " + ", ".join(bad)),
      counts=counts)


def check_resumes(runs: Sequence[Dict[str, Any]],
                  others: Sequence[Dict[str, Any]] = ()) -> Dict[str, Any]:
  """Each attempt of `runs` (in order) resumed from the step a SIGTERM
  before it saved, never beyond the last step logged before it; no
  traceback there or in `others`."""
  bad, logged, saved = [], 0, None
  for a in runs:
    if a["resumed_from"] is None and not a["steps_logged"]:
      continue  # Stopped before it restored anything.
    name = os.path.basename(a["log"])
    start = a["resumed_from"] or 0
    if saved is not None and start != saved:
      bad.append(f"{name} resumed from {start}, not the saved {saved}")
    if start > logged:
      bad.append(f"{name} resumed from {start}, beyond the last logged "
                 f"step {logged}")
    if a["steps_logged"]:
      logged = max(logged, a["steps_logged"][1])
    saved = a.get("stopped_at")
  bad += [f"traceback in {os.path.basename(a['log'])}.err"
          for a in (*runs, *others) if a["traceback"]]
  return _check(not bad, "each resume started from the step saved before "
                "it; no traceback" if not bad else "; ".join(bad))


def check_final_state(mine: Dict[str, Any], ref: Dict[str, Any],
                      steps: int) -> Dict[str, Any]:
  """The last checkpoints of both runs are equal bit for bit, part by part."""
  if steps not in mine["states"] or steps not in ref["states"]:
    return _check(False, f"no restorable checkpoint {steps}: kept "
                  f"{mine['steps']} (reference {ref['steps']})")
  a, b = mine["states"][steps], ref["states"][steps]
  diffs = {p: bit_differences(getattr(a, p), getattr(b, p)) for p in PARTS}
  differing = {p: d for p, d in diffs.items() if d}
  return _check(
      not differing,
      f"step {steps}: {', '.join(PARTS)} equal bit for bit ("
      f"{len(_leaves(a))} arrays)" if not differing
      else "differ: " + "; ".join(f"{p} ({len(d)} arrays, e.g. {d[0]})"
                                  for p, d in differing.items()),
      differing=differing)


def check_checkpoints(runs: Sequence[Dict[str, Any]], mine: Dict[str, Any],
                      ref: Dict[str, Any]) -> Dict[str, Any]:
  """Every checkpoint kept after each attempt of `runs` restored; at the
  end, those of a step the reference kept too equal its; none was ever
  set aside as unreadable."""
  problems, restored = [], 0
  for a in runs:
    name = os.path.basename(a["log"])
    restored += len(a["kept"]) - len(a["restore_errors"])
    problems += [f"after {name}, step {k}: {e}"
                 for k, e in a["restore_errors"].items()]
  problems += [f"reference step {k}: {e}" for k, e in ref["errors"].items()]
  common = sorted(set(mine["states"]) & set(ref["states"]))
  problems += [f"step {k} differs from the reference's" for k in common
               if bit_differences(mine["states"][k], ref["states"][k])]
  set_aside = sorted({n for a in runs for n in a["set_aside"]})
  if set_aside:
    problems.append(f"set aside as unreadable: {set_aside}")
  unchecked = sorted(set(mine["steps"]) - set(mine["checksummed"]))
  return _check(
      not problems and bool(mine["steps"]),
      f"after each of {len(runs)} attempts every kept checkpoint restored "
      f"({restored} restores); kept at the end {mine['steps']}, "
      f"{common} equal the reference's"
      + (f"; saved without checksums: {unchecked}" if unchecked else "")
      if not problems else "; ".join(problems),
      kept=mine["steps"], reference_kept=ref["steps"], restores=restored,
      leftovers=mine["leftovers"])


def check_metrics(records: Sequence[Dict[str, Any]], bad: Sequence[str],
                  reference: Sequence[Dict[str, Any]], steps: int
                  ) -> Dict[str, Any]:
  """metrics.jsonl: steps 1..`steps` each once, every line a record, the
  losses of the reference."""
  counts: Dict[Any, int] = {}
  for r in records:
    counts[r.get("step")] = counts.get(r.get("step"), 0) + 1
  twice = sorted(s for s, c in counts.items() if c > 1)
  missing = sorted(set(range(1, steps + 1)) - set(counts))
  extra = sorted(set(counts) - set(range(1, steps + 1)), key=str)
  ref_loss = {r.get("step"): r.get("loss") for r in reference}
  off = sorted({r.get("step") for r in records
                if ref_loss.get(r.get("step")) != r.get("loss")}, key=str)
  problems = []
  if twice:
    problems.append(f"{len(twice)} step(s) logged more than once, e.g. "
                    f"{twice[:8]} ({len(records)} records)")
  if missing:
    problems.append(f"{len(missing)} step(s) missing, e.g. {missing[:8]}")
  if extra:
    problems.append(f"unexpected steps {extra[:8]}")
  if bad:
    problems.append(f"{len(bad)} line(s) not JSON, e.g. {bad[0]!r}")
  if off:
    problems.append(f"loss differs from the reference's at {len(off)} "
                    f"step(s), e.g. {off[:8]}")
  return _check(not problems, f"steps 1..{steps} each once, losses equal "
                "the reference's" if not problems else "; ".join(problems),
                duplicated=twice, missing=missing, records=len(records))


def check_run(run: Dict[str, Any], reference: Dict[str, Any],
              chaos_dir: str, reference_dir: str, steps: int,
              n: int, target: train_lib.TrainState
              ) -> Dict[str, Dict[str, Any]]:
  """Every check of the chaos run (`chaos_run`) against the reference."""
  attempts, final = run["attempts"], run["final"]
  mine = restore_all(chaos_dir, target)
  ref = restore_all(reference_dir, target)
  records, bad = read_metrics(chaos_dir)
  return dict(
      interruptions=check_interruptions(attempts, n),
      finished=check_finished(final, reference, steps),
      exit_codes=check_exit_codes(attempts),
      resumes=check_resumes(attempts + ([final] if final else []),
                            [reference]),
      bit_equal=check_final_state(mine, ref, steps),
      checkpoints=check_checkpoints(attempts + ([final] if final else []),
                                    mine, ref),
      metrics=check_metrics(records, bad, read_metrics(reference_dir)[0],
                            steps))


# -------------------------------------------------------------------- main


def run(*, interruptions: int = 20, seed: int = 0, steps: int = 80,
        config: str = CONFIG, config_overrides: Sequence[str] = (),
        workdir: Optional[str] = None, cache_dir: Optional[str] = None,
        max_new_steps: int = 4, jitter_s: float = 0.5,
        timeout_s: float = 300.0, echo: bool = True) -> Dict[str, Any]:
  """The chaos run, the uninterrupted reference and the checks.

  Args:
    interruptions: N.
    seed: the plan's seed.
    steps: training steps of both runs.
    config: the config file ('path.py[:variant]') both runs train.
    config_overrides: `--config.key=value` arguments for launch.py, after
      the chaos settings (`config_args`).
    workdir: holds `chaos/`, `reference/` and `logs/` (must not hold the
      first two yet); default a new temporary directory.
    cache_dir: the JAX compilation cache of the subprocesses (default
      $JAX_COMPILATION_CACHE_DIR, else $TMPDIR/jaxdiff_chaos_jit_cache).
    max_new_steps, jitter_s: the "training" moments (`plan`, `chaos_run`).
    timeout_s: the longest wait for a step or an exit.
    echo: print progress.

  Returns:
    The result (see `main`), with `passed` and the `checks`.
  """
  workdir = os.path.abspath(workdir or tempfile.mkdtemp(
      prefix="jaxdiff_chaos_"))
  chaos_dir = os.path.join(workdir, "chaos")
  reference_dir = os.path.join(workdir, "reference")
  log_dir = os.path.join(workdir, "logs")
  for d in (chaos_dir, reference_dir):
    if os.path.exists(d):
      raise FileExistsError(f"{d} exists; give a fresh --workdir.")
  os.makedirs(log_dir, exist_ok=True)
  cache_dir = cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or (
      os.path.join(tempfile.gettempdir(), "jaxdiff_chaos_jit_cache"))
  env = child_env(cache_dir)
  schedule = plan(interruptions, seed, max_new_steps=max_new_steps)
  extra = tuple(config_overrides)
  target = target_state(run_config(steps, config, extra))

  t0 = time.perf_counter()
  loadavg_start = [round(v, 2) for v in os.getloadavg()]
  if echo:
    print(f"chaos: {interruptions} interruptions (seed {seed}), {steps} "
          f"steps, in {workdir}", flush=True)
  chaos = chaos_run(chaos_dir, launch_command(chaos_dir, steps, config, extra),
                    target, schedule, env, log_dir, jitter_s=jitter_s,
                    timeout_s=timeout_s, echo=echo)
  if echo:
    print("  reference (uninterrupted) ...", flush=True)
  reference = plain_attempt(
      launch_command(reference_dir, steps, config, extra), env,
      os.path.join(log_dir, "reference"), timeout_s)
  checks = check_run(chaos, reference, chaos_dir, reference_dir, steps,
                     interruptions, target)
  return dict(
      interruptions=interruptions, seed=seed, steps=steps, config=config,
      overrides=overrides(steps), config_overrides=list(extra),
      max_new_steps=max_new_steps,
      jitter_s=jitter_s, workdir=workdir, jit_cache=cache_dir,
      command=chaos["command"], attempts=chaos["attempts"],
      final=chaos["final"], reference=reference,
      passed=all(c["passed"] for c in checks.values()), checks=checks,
      host=platform.node(), cpu_count=os.cpu_count(), jax=jax.__version__,
      loadavg_start=loadavg_start,
      loadavg_end=[round(v, 2) for v in os.getloadavg()],
      total_s=round(time.perf_counter() - t0, 1))


def print_summary(result: Dict[str, Any]) -> None:
  print(f"\nchaos run: N = {result['interruptions']}, seed {result['seed']}, "
        f"{result['steps']} steps, {result['total_s']:.0f} s, load average "
        f"{result['loadavg_start']} at start, {result['loadavg_end']} at end")
  for a in result["attempts"]:
    print(f"  {attempt_line(a)}")
  for name, c in result["checks"].items():
    print(f"{'PASS' if c['passed'] else 'FAIL'} {name}: {c['detail']}")
  print("PASSED" if result["passed"] else "FAILED")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """The options; `config_overrides`: the `--config.key=value` arguments,
  checked (with the chaos settings) by launch.py's parser."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False)
  parser.add_argument("--config", default=CONFIG, metavar="PATH[:VARIANT]",
                      help=f"the config both runs train (default {CONFIG}); "
                      "--config.KEY=VALUE overrides its keys, as in "
                      "launch.py")
  parser.add_argument("--interruptions", type=int, default=20,
                      help="N, the number of interruptions (default 20)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the interruption plan")
  parser.add_argument("--steps", type=int, default=80,
                      help="training steps (default 80; about 4 per "
                      "interruption are enough)")
  parser.add_argument("--out", default=DEFAULT_OUT,
                      help=f"JSON output (default {DEFAULT_OUT}); '' for none")
  parser.add_argument("--workdir", default=None,
                      help="a fresh directory for the two runs and the logs "
                      "(default: a new temporary one)")
  parser.add_argument("--max_new_steps", type=int, default=4,
                      help="a 'training' moment waits for 1 to this + 1 "
                      "logged steps")
  parser.add_argument("--jitter_s", type=float, default=0.5,
                      help="then up to this many seconds more")
  parser.add_argument("--timeout_s", type=float, default=300.0,
                      help="the longest wait for a step or an exit")
  args, args.config_overrides = parser.parse_known_args(argv)
  if args.interruptions < 0 or args.steps < 1:
    parser.error("--interruptions must be >= 0 and --steps >= 1.")
  if any(re.match(r"^-{1,2}config\.training\.num_train_steps(=|$)", a)
         for a in args.config_overrides):
    parser.error("give the number of steps as --steps.")
  # launch.py runs in the repository's root: a relative path to a file
  # from here (not the root's) becomes absolute.
  path, colon, variant = args.config.partition(":")
  if (os.path.exists(path)
      and os.path.abspath(path) != os.path.join(ROOT, path)):
    args.config = os.path.abspath(path) + colon + variant
  try:
    run_config(args.steps, args.config, args.config_overrides)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args = parse_args(argv)
  try:
    result = run(interruptions=args.interruptions, seed=args.seed,
                 steps=args.steps, config=args.config,
                 config_overrides=args.config_overrides, workdir=args.workdir,
                 max_new_steps=args.max_new_steps, jitter_s=args.jitter_s,
                 timeout_s=args.timeout_s)
  except FileExistsError as e:
    print(f"chaos: error: {e}", file=sys.stderr)
    sys.exit(2)
  print_summary(result)
  if args.out:
    out = args.out if os.path.isabs(args.out) else os.path.join(ROOT,
                                                                args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    files.write_json(out, result, indent=1)
    print(f"wrote {out}")
  return result


if __name__ == "__main__":
  sys.exit(0 if main()["passed"] else 1)
