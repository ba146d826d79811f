"""Stopping on several processes: they agree only every `log_every` steps.

A per-step `distributed.any_process` is a collective and a host round trip
that stalls asynchronous dispatch; the loop exchanges the stop requests only
at the start and at multiples of `agree_every` (`train.loop.StopAgreement`),
and every process still stops at the same step with the same checkpoint.
"""
from __future__ import annotations

import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launch_helpers  # pylint: disable=g-bad-import-order
from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import distributed
from jaxdiff.train import hooks as hooks_lib
from jaxdiff.train import loop as loop_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class _Recorder(hooks_lib.Hook):
  """A hook that notes the steps it is called at."""

  def __init__(self, every, run_when_stopping=True):
    self.every, self.run_when_stopping = every, run_when_stopping
    self.steps = []

  def __call__(self, step, state, record):
    self.steps.append(step)


class _State:
  def __init__(self, step):
    self.step = step


class _Stop:
  requested = False


def _loop(monkeypatch, *, processes, per_dispatch, request_at=None,
          other_at=None, every=4, start=0, total=40):
  """Runs the loop on fake steps as one of `processes` processes.

  This process's flag is set during the step `request_at`; `other_at` is the
  step during which another process gets its request. Returns the steps at
  which the loop called `distributed.any_process`, the final step, the
  hooks and the stop flag.
  """
  stop, done, calls = _Stop(), [start], []

  def dispatch(state, n):
    done[0] = state.step + n
    if request_at is not None and done[0] >= request_at:
      stop.requested = True
    return _State(done[0]), dict(loss=jnp.float32(0), nonfinite=jnp.int32(0))

  def any_process(flag):
    calls.append(done[0])
    return bool(flag) or (other_at is not None and done[0] >= other_at)

  monkeypatch.setattr(jax, "process_count", lambda: processes)
  monkeypatch.setattr(distributed, "any_process", any_process)
  hooks = [_Recorder(1), _Recorder(2, run_when_stopping=False)]
  _, step = loop_lib.run_loop(
      _State(start), dispatch, hooks, total=total, per_dispatch=per_dispatch,
      max_nonfinite=1, stop=stop, ckpt=None, agree_every=every)
  return calls, step, hooks, stop


@pytest.mark.parametrize("per_dispatch", [1, 2])
@pytest.mark.parametrize("here", [True, False])
def test_processes_agree_only_at_multiples_of_agree_every(
    monkeypatch, per_dispatch, here):
  # A request during step 9, on this process or on another one.
  request = dict(request_at=9) if here else dict(other_at=9)
  calls, step, (every_step, sampler), stop = _loop(
      monkeypatch, processes=2, per_dispatch=per_dispatch, **request)
  # Every process goes on to the next multiple of 4 and stops there.
  assert step == 12
  # One collective before the first dispatch, then only at multiples of 4,
  # not after every dispatch (12 / per_dispatch of them).
  assert calls == [0, 4, 8, 12]
  ends = list(range(per_dispatch, 13, per_dispatch))
  assert every_step.steps == ends
  # A hook that does not run when stopping is skipped at the last step only.
  assert sampler.steps == [2, 4, 6, 8, 10]
  assert stop.requested  # Agreed: set on every process.


def test_processes_stop_before_the_first_step_on_an_early_request(monkeypatch):
  calls, step, (every_step, _), _ = _loop(monkeypatch, processes=2,
                                          per_dispatch=1, other_at=0, start=8)
  assert (calls, step, every_step.steps) == ([8], 8, [])


def test_processes_without_a_request_train_to_the_end(monkeypatch):
  calls, step, _, stop = _loop(monkeypatch, processes=2, per_dispatch=1,
                               total=10)
  assert calls == [0, 4, 8] and step == 10 and not stop.requested


@pytest.mark.parametrize("per_dispatch", [1, 3])
def test_one_process_stops_at_once_without_a_collective(monkeypatch,
                                                        per_dispatch):
  calls, step, (every_step, sampler), _ = _loop(
      monkeypatch, processes=1, per_dispatch=per_dispatch, request_at=6)
  want = -(-6 // per_dispatch) * per_dispatch  # The dispatch of step 6.
  assert (calls, step) == ([], want)
  assert every_step.steps[-1] == want and want not in sampler.steps


# Each of two processes (jax.distributed, one CPU device each) trains the
# tiny config and counts the process_allgather calls (collectives) against
# the steps dispatched; prints its final step and the counts.
_COUNTING_RUN = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from jaxdiff import distributed
    distributed.initialize()
    from jax.experimental import multihost_utils
    from configs import mnist_ddpm
    from jaxdiff import train
    from jaxdiff.train import loop as loop_lib

    done, calls = [0], []  # steps dispatched; `done` at each allgather
    real_allgather, real_dispatcher = (multihost_utils.process_allgather,
                                       loop_lib._dispatcher)

    def allgather(*args, **kwargs):
      calls.append(done[0])
      return real_allgather(*args, **kwargs)

    def dispatcher(*args):
      dispatch = real_dispatcher(*args)
      def counted(state, n):
        done[0] += n
        return dispatch(state, n)
      return counted

    multihost_utils.process_allgather = allgather
    loop_lib._dispatcher = dispatcher
    c = mnist_ddpm.get_config("tiny")
    c.data.name = "organamnist_small"
    c.training.num_train_steps = 100000
    c.training.log_every = 4
    c.training.checkpoint_every = 0
    c.training.sample_every = 0
    state = train.train_and_evaluate(c, {workdir!r})
    print(json.dumps(dict(step=int(state.step), calls=calls)))
""")


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  """SIGTERM to process 1 only: both stop at the next multiple of log_every
  with one checkpoint, and they exchanged requests only at those steps."""
  workdir = tmp_path / "run"
  port = _free_port()
  code = _COUNTING_RUN.format(repo=str(REPO), workdir=str(workdir))
  procs = []
  for i in range(2):
    env = launch_helpers.launch_env()
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  watchdog = threading.Timer(TIMEOUT, lambda: [p.kill() for p in procs])
  watchdog.start()
  lines, signalled_at = [], None
  for line in procs[0].stdout:
    lines.append(line)
    m = re.match(r"jaxdiff: step (\d+)/", line)
    if m:
      signalled_at = int(m.group(1))
      procs[1].send_signal(signal.SIGTERM)
      break
  results = [p.communicate() for p in procs]
  watchdog.cancel()
  out0 = "".join(lines) + results[0][0]
  for proc, (_, err) in zip(procs, results):
    assert proc.returncode == 0, err[-3000:]
  assert signalled_at is not None, results[0][1][-3000:]
  facts = [json.loads(out.strip().splitlines()[-1])
           for out in (out0, results[1][0])]
  step = facts[0]["step"]
  assert step % 4 == 0 and step > signalled_at and facts[1]["step"] == step
  # Process 0 got no signal, yet reports the agreed stop and its checkpoint.
  assert f"stopped by signal at step {step}; checkpoint saved" in out0
  with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
    assert ckpt.all_steps() == [step]
    assert int(ckpt.restore_raw()["step"]) == step
  with open(workdir / "metrics.jsonl") as f:
    assert [json.loads(l)["step"] for l in f] == list(range(4, step + 1, 4))
  # The collectives before the loop and at the final save happen with 0 and
  # `step` steps dispatched; in the loop, only at multiples of 4.
  for f in facts:
    in_loop = [s for s in f["calls"] if 0 < s < step]
    assert in_loop == list(range(4, step, 4)), f["calls"]
  np.testing.assert_equal(facts[0]["calls"], facts[1]["calls"])
