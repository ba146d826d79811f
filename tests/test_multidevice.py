"""Data parallelism: 8 devices equal 1, and two processes train as one.

The device count is fixed when JAX starts, so each case runs in a subprocess:
`--xla_force_host_platform_device_count` gives a CPU several devices, and two
processes joined by `jax.distributed` stand in for two hosts.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import launch_helpers  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 420

# One train step of the tiny CNN config (batch 16) on 8 devices and on 1,
# from the same initial state; then 2 steps on 1 device for the multi-host
# comparison. Writes params and facts about the compiled step to an npz.
_EIGHT_VS_ONE = textwrap.dedent("""
    import json, os, sys, tempfile
    sys.path.insert(0, {repo!r})
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from configs import mnist_ddpm
    from jaxdiff import config as config_lib, train

    assert jax.device_count() == 8, jax.devices()
    c = mnist_ddpm.get_config("tiny")
    c.data.name = "organamnist_small"
    st = config_lib.typed(c)
    ds = train.load_train_data(st.data)
    model, process = config_lib.build_model(st), config_lib.build_process(st)
    tx = train.make_optimizer(st.training)
    apply_fn = train.make_apply_fn(model)
    out, facts = {{}}, {{}}
    for n in (8, 1):
      mesh = train.make_mesh(jax.devices()[:n])
      rep = NamedSharding(mesh, P())
      state = jax.jit(lambda: train.init_state(
          model, tx, train.run_keys(st.seed)[0], st.data.image_shape),
          out_shardings=rep)()
      images = jax.device_put(ds.images, rep)
      labels = jax.device_put(ds.labels, rep)
      fn = train.make_train_fn(st, apply_fn, tx, process, mesh, length=1)
      hlo = fn.lower(state, images, labels).compile().as_text()
      facts[n] = dict(all_reduce="all-reduce" in hlo,
                      per_device_batch=[b for b in (16, 2)
                                        if f"f32[{{b}},28,28,1]" in hlo])
      for s in (1, 2) if n == 1 else (1,):
        state, metrics = fn(state, images, labels)
        leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
        for path, leaf in leaves:
          out[f"n{{n}}_s{{s}}{{jax.tree_util.keystr(path)}}"] = np.asarray(leaf)
        out[f"n{{n}}_s{{s}}_loss"] = np.asarray(metrics["loss"])
    np.savez({out_path!r}, **out)
    c.training.batch_size = 12
    try:
      train.train_and_evaluate(c, tempfile.mkdtemp())
      facts["error"] = None
    except ValueError as e:
      facts["error"] = str(e)
    print(json.dumps(facts))
""")


def _env(**extra):
  env = launch_helpers.launch_env()
  env.update(extra)
  env["XLA_FLAGS"] = launch_helpers.xla_flags(extra.get("XLA_FLAGS", ""))
  return env


@pytest.fixture(scope="module", name="eight")
def fixture_eight(tmp_path_factory):
  out_path = str(tmp_path_factory.mktemp("eight") / "params.npz")
  proc = subprocess.run(
      [sys.executable, "-c", _EIGHT_VS_ONE.format(repo=str(REPO),
                                                 out_path=out_path)],
      cwd=REPO, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
      capture_output=True, text=True, timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  facts = json.loads(proc.stdout.strip().splitlines()[-1])
  with np.load(out_path) as z:
    arrays = dict(z)
  return facts, arrays


def _params(arrays, prefix):
  return {k[len(prefix):]: v for k, v in arrays.items()
          if k.startswith(prefix) and not k.endswith("_loss")}


@pytest.mark.slow
def test_one_step_on_8_devices_equals_1_device(eight):
  facts, arrays = eight
  p8, p1 = _params(arrays, "n8_s1"), _params(arrays, "n1_s1")
  assert p8 and sorted(p8) == sorted(p1)
  for k in p8:
    np.testing.assert_allclose(p8[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(arrays["n8_s1_loss"], arrays["n1_s1_loss"],
                             rtol=1e-6)
  # The 8-device step is data parallel: 2 images per device, gradients
  # summed across devices. One device holds the whole batch.
  assert facts["8"] == {"all_reduce": True, "per_device_batch": [2]}
  assert facts["1"] == {"all_reduce": False, "per_device_batch": [16]}


@pytest.mark.slow
def test_batch_not_divisible_by_devices_is_a_clear_error(eight):
  facts, _ = eight
  assert facts["error"] == (
      "config.training.batch_size=12 is not divisible by the 8 devices; use "
      "a multiple of 8.")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_device(eight, tmp_path):
  """2 hosts x 2 devices via jax.distributed: same result, one writer."""
  _, arrays = eight
  workdir = tmp_path / "run"
  port = _free_port()
  cmd = [sys.executable, str(REPO / "launch.py"), "--config",
         "configs/mnist_ddpm.py:tiny", "--workdir", str(workdir),
         "--config.data.name=organamnist_small",
         "--config.training.num_train_steps=2",
         "--config.training.log_every=1", "--config.training.sample_every=2"]
  procs = [subprocess.Popen(
      cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                          JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                          JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  results = []
  for proc in procs:
    try:
      results.append(proc.communicate(timeout=TIMEOUT) + (proc.returncode,))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      pytest.fail("the two processes did not finish")
  for out, err, rc in results:
    assert rc == 0, err[-3000:]
  (out0, _, _), (out1, _, _) = results
  assert "4 device(s) (cpu) on 2 process(es)" in out0
  assert re.findall(r"^jaxdiff: step (\d)/2", out0, re.M) == ["1", "2"]
  assert "jaxdiff:" not in out1  # Only process 0 logs.
  with open(workdir / "metrics.jsonl") as f:
    assert [json.loads(l)["step"] for l in f] == [1, 2]  # Written once.
  assert os.path.isfile(workdir / "samples" / "step_0000002.png")
  # The checkpoint (plain Orbax) equals two steps on one device.
  code = textwrap.dedent(f"""
      import sys, numpy as np, jax, orbax.checkpoint as ocp
      m = ocp.CheckpointManager({str(workdir / "checkpoints")!r})
      s = m.restore(m.latest_step(), args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))["state"]
      flat = {{jax.tree_util.keystr(p): np.asarray(l) for p, l in
              jax.tree_util.tree_flatten_with_path(s["params"])[0]}}
      np.savez(sys.argv[1], step=np.asarray(s["step"]), **flat)
  """)
  got_path = str(tmp_path / "got.npz")
  proc = subprocess.run([sys.executable, "-c", code, got_path], env=_env(),
                        capture_output=True, text=True, timeout=TIMEOUT,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  want = _params(arrays, "n1_s2")
  with np.load(got_path) as got:
    assert int(got["step"]) == 2
    assert sorted(k for k in got.files if k != "step") == sorted(want)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6,
                                 err_msg=k)


# config.cpu_devices: one JAX device per core on a CPU host.
_CPU_DEVICES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax
    from jaxdiff import distributed
    facts = dict(requested=distributed.set_cpu_devices({n}))
    facts["devices"] = jax.device_count()
    facts["late"] = distributed.set_cpu_devices(3)  # Backend already up.
    try:
      distributed.set_cpu_devices(-2)
      facts["error"] = None
    except ValueError as e:
      facts["error"] = str(e)
    print(json.dumps(facts))
""")


@pytest.mark.parametrize("n,xla_flags,want", [
    (2, None, dict(requested=2, devices=2)),
    (0, None, dict(requested=0, devices=1)),
    # An explicit XLA flag wins over the config.
    (2, "--xla_force_host_platform_device_count=3",
     dict(requested=0, devices=3)),
])
def test_set_cpu_devices(n, xla_flags, want):
  extra = {"XLA_FLAGS": xla_flags} if xla_flags else {}
  proc = subprocess.run(
      [sys.executable, "-c", _CPU_DEVICES.format(repo=str(REPO), n=n)],
      cwd=REPO, env=_env(**extra), capture_output=True, text=True,
      timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  facts = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {k: facts[k] for k in want} == want
  assert facts["late"] == 0  # Too late: a warning, not a crash.
  if xla_flags is None:
    assert facts["error"].startswith("config.cpu_devices=-2: use a count")


def test_usable_cores_follows_affinity(monkeypatch):
  from jaxdiff import distributed  # pylint: disable=import-outside-toplevel
  # Pinned (taskset -c 0,3,5): three cores, whatever the machine has.
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5},
                      raising=False)
  assert distributed.usable_cores() == 3
  # Without affinity support (not Linux): the machine's core count.
  monkeypatch.delattr(os, "sched_getaffinity", raising=False)
  monkeypatch.setattr(os, "cpu_count", lambda: 6)
  assert distributed.usable_cores() == 6


@pytest.mark.slow
def test_launch_trains_on_cpu_devices(tmp_path):
  """`--config.cpu_devices=2` gives the train loop a 2-device mesh."""
  proc = subprocess.run(
      [sys.executable, "launch.py", "--config", "configs/mnist_ddpm.py:tiny",
       "--workdir", str(tmp_path), "--config.cpu_devices=2",
       "--config.data.name=organamnist_small",
       "--config.training.num_train_steps=2",
       "--config.training.sample_every=0"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "2 device(s) (cpu) on 1 process(es)" in proc.stdout


@pytest.mark.parametrize("cores,batch,want", [(2, 128, 2), (6, 128, 4),
                                             (8, 12, 6), (3, 0, 3), (16, 128, 8),
                                             (4, 7, 1)])
def test_auto_cpu_devices_divide_the_batch(monkeypatch, cores, batch, want):
  from jaxdiff import distributed  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(distributed, "usable_cores", lambda: cores)
  monkeypatch.setattr(jax.config, "update", lambda k, v: calls.append((k, v)))
  assert distributed.set_cpu_devices(-1, batch) == want
  assert calls == [("jax_num_cpu_devices", want)]


@pytest.mark.slow
def test_denoise_on_2_devices_equals_1(tmp_path):
  """`--mode denoise` splits each batch over the devices; results agree."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from configs import organamnist
  from jaxdiff import checkpoint, train
  from jaxdiff import config as config_lib
  # pylint: enable=import-outside-toplevel
  config = organamnist.get_config("tiny")
  s = config_lib.typed(config)
  workdir = tmp_path / "run"
  state = train.init_state(config_lib.build_model(s),
                           train.make_optimizer(s.training),
                           jax.random.key(0), s.data.image_shape)
  # The initial output layer is zero (eps = 0): perturb every weight so the
  # network's output, and DPS's gradient through it, are not trivial.
  leaves, tree = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  state = state.replace(params=params, ema_params=params,
                        step=jnp.asarray(2, jnp.int32))
  with checkpoint.Checkpointer(str(workdir / "checkpoints")) as ckpt:
    ckpt.save(2, state, config_lib.to_json(config), force=True)
  runs = {}
  for n in (1, 2):
    out = tmp_path / f"out{n}"
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config", "configs/organamnist.py:tiny",
         "--workdir", str(workdir), "--mode", "denoise",
         f"--config.cpu_devices={n}", "--config.data.name=organamnist_small",
         "--config.denoise.methods=tweedie,dps",
         # 7 Tweedie images: 2 devices pad the batch to 8 (the Gaussian
         # noise model makes Tweedie deterministic, so 7 rows compare).
         "--config.denoise.noise_model=gaussian",
         "--config.denoise.method_num_images=tweedie:7",
         "--config.denoise.num_images=8", f"--config.denoise.out_dir={out}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"split over {n} device(s)" in proc.stdout
    with np.load(out / "reconstructions.npz") as f:
      runs[n] = {k: f[k] for k in ("noisy", "tweedie", "dps")}
    assert len(runs[n]["tweedie"]) == 7
  for k, images in runs[1].items():
    diff = np.abs(images.astype(int) - runs[2][k].astype(int))
    assert diff.max() <= 1, (k, diff.max())
  # DPS moved away from the measurement: the comparison is not vacuous.
  assert np.abs(runs[1]["dps"].astype(int) - runs[1]["noisy"]).mean() > 5
