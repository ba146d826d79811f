"""Pretrained models shipped inside the package, loaded without a network.

    model, params, config = jaxdiff.pretrained.load("organamnist_cpu")
    eps, x0 = jaxdiff.pretrained.trained("organamnist_cpu").denoise(x_t, t)

    python launch.py --config configs/organamnist.py:cpu --mode denoise \\
        --workdir runs/try --config.init_from=pretrained:organamnist_cpu

Each model is one `.npz` under `jaxdiff/assets/pretrained/`: the EMA
parameters of a training run (float16 by default, '/'-joined flax paths; cast
back to float32 on load), the run's settings as JSON (`__config__`) and what
it came from (`__meta__`: step, source, the command that made it). Its
SHA-256 is written in `MODELS` below and checked on every load, so a
truncated or altered file is an error, not a silently different model.

Every mode takes a pretrained model through `config.init_from`: the sampling,
denoising, evaluation, classification and visualisation modes use its
parameters instead of the workdir's checkpoint (the workdir only receives the
outputs), and training starts from them (fine-tuning) when the workdir has
no checkpoint yet. The given config must describe the same network and
process as the model's; `check_compatible` names the flags that differ.

`export` writes such a file from a trained run:

    python -m jaxdiff.pretrained --config configs/organamnist.py:cpu \\
        --workdir runs/organ_v --name organamnist_cpu
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import files

ASSET_DIR = os.path.join(os.path.dirname(__file__), "assets", "pretrained")
PREFIX = "pretrained:"
_CONFIG_KEY, _META_KEY = "__config__", "__meta__"

# Keys that must agree between a given config and a pretrained model's: what
# the parameters mean (`workdir.MEANING`) and the network's shape.
SAME = ("model.name", "model.kwargs", "model.prediction", "model.sigma_data",
        "diffusion", "training.conditional", "data.image_size",
        "data.channels", "data.num_classes")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One shipped model.

  Attributes:
    sha256: the file's SHA-256 (hex), checked on load.
    config: the `--config` that describes it (the modes need its sections).
    about: one line: what it is and how good (the README's table).
  """
  sha256: str
  config: str
  about: str

  def path(self, name: str) -> str:
    return os.path.join(ASSET_DIR, f"{name}.npz")


# name -> Entry. Adding a model: `export` it, put the file in ASSET_DIR and a
# line here with the SHA-256 `export` printed.
MODELS: Dict[str, Entry] = {
    "organamnist_cpu": Entry(
        sha256="1d2486ee434f97b5dc3b8aa7c75864bb23aca26e62af2137e492e407c95ef9c9",
        config="configs/organamnist.py:cpu",
        about="OrganAMNIST denoiser, 1.1M-parameter U-Net, v-prediction, "
              "8,500 steps on 2 CPU cores; Tweedie 22.03 dB / 0.707 on the "
              "denoising protocol (docs/parameterizations/)"),
    "mnist_cond_cpu": Entry(
        sha256="f511246bd1230f165068981572538d64281c82d8ba48e4a656759a0679c6964d",
        config="configs/mnist_cond.py:cpu",
        about="class-conditional MNIST, 0.64M-parameter U-Net on the "
              "1000-step chain, 9,000 steps on 2 CPU cores: generates by "
              "class, denoises and classifies (docs/conditional/)"),
    "cifar10_cpu": Entry(
        sha256="02dcea7094ef5743212be66aba8b83db8d4f42abbbe652add3b177f57908b3f9",
        config="configs/cifar10.py:cpu",
        about="class-conditional CIFAR-10, 2.5M-parameter U-Net, "
              "v-prediction on the 1000-step chain, 3,500 steps on 2 CPU "
              "cores: generates by class, denoises and classifies "
              "(docs/conditional/)"),
}


def names() -> Tuple[str, ...]:
  return tuple(sorted(MODELS))


def entry(name: str) -> Entry:
  """The registered model `name` (a ValueError lists the others)."""
  if name not in MODELS:
    raise ValueError(
        f"Unknown pretrained model {name!r}; shipped: "
        f"{', '.join(names()) or '(none)'}.")
  return MODELS[name]


def parse(spec: str) -> Optional[str]:
  """'pretrained:NAME' -> NAME; '' -> None; anything else a ValueError."""
  if not spec:
    return None
  if not spec.startswith(PREFIX) or not spec[len(PREFIX):]:
    raise ValueError(
        f"config.init_from={spec!r} is not 'pretrained:NAME'; shipped "
        f"models: {', '.join(names()) or '(none)'}.")
  return spec[len(PREFIX):]


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _json_array(obj: Any) -> np.ndarray:
  return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)


def export(config, params, path: str, *, meta: Optional[Mapping] = None,
           dtype: str = "float16") -> str:
  """Writes params (cast to `dtype`) and config to `path`; its SHA-256."""
  flat = traverse_util.flatten_dict(params, sep="/")
  arrays = {k: np.asarray(v, dtype) for k, v in flat.items()}
  arrays[_CONFIG_KEY] = _json_array(config_lib.to_json(config))
  arrays[_META_KEY] = _json_array(dict(meta or {}))
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  files.write_bytes(path, buf.getvalue())
  return sha256(path)


def read(path: str, expected_sha256: Optional[str] = None
         ) -> Tuple[Any, dict, dict]:
  """(params float32, config JSON, meta) of a file written by `export`.

  Raises:
    CheckpointError: the file is missing or fails its SHA-256 check.
  """
  if not os.path.isfile(path):
    raise ckpt_lib.CheckpointError(
        f"Pretrained weights {path} are missing; reinstall jaxdiff (or "
        "`git checkout` the file).")
  if expected_sha256 and sha256(path) != expected_sha256:
    raise ckpt_lib.CheckpointError(
        f"Pretrained weights {path} fail their SHA-256 check (a truncated "
        "or altered file); reinstall jaxdiff (or `git checkout` the file).")
  with np.load(path) as z:
    config = json.loads(z[_CONFIG_KEY].tobytes())
    meta = json.loads(z[_META_KEY].tobytes())
    flat = {k: jnp.asarray(z[k], jnp.float32) for k in z.files
            if k not in (_CONFIG_KEY, _META_KEY)}
  return traverse_util.unflatten_dict(flat, sep="/"), config, meta


def load(name: str) -> Tuple[Any, Any, Any]:
  """(flax module, float32 params, ConfigDict) of shipped model `name`.

  `model.apply({"params": params}, x, t, y)` is the network's raw output;
  `config.model.prediction` says what it means (`jaxdiff.denoiser`).
  """
  e = entry(name)
  params, config_json, _ = read(e.path(name), e.sha256)
  config = config_lib.from_json(config_json)
  return config_lib.build_model(config), params, config


def check_compatible(given, model_config_json: Mapping, name: str) -> None:
  """Raises ValueError naming the flags where `given` describes another
  network or process than pretrained model `name`."""
  from jaxdiff import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  changes = [c for c in workdir_lib.config_changes(
      model_config_json, config_lib.to_json(given))
             if any(c[0] == k or c[0].startswith(k + ".") for k in SAME)
             and not workdir_lib.is_resumable(c[0])]
  if changes:
    raise ValueError(
        f"Pretrained model {name!r} is a different network or process than "
        f"the config describes ({workdir_lib.format_changes(changes)}; model "
        f"-> given); use --config {entry(name).config}.")


def check_shapes(params, abstract_params, what: str) -> None:
  """Raises CheckpointError when `params` do not fit the network."""
  got = {k: tuple(v.shape) for k, v in
         traverse_util.flatten_dict(params, sep="/").items()}
  want = {k: tuple(v.shape) for k, v in
          traverse_util.flatten_dict(abstract_params, sep="/").items()}
  if got != want:
    bad = sorted(set(got) ^ set(want)) or sorted(
        k for k in got if got[k] != want[k])
    raise ckpt_lib.CheckpointError(
        f"The weights of {what} do not fit the configured network (first "
        f"differing parameter: {bad[0]}); use the model's own --config "
        "(jaxdiff.pretrained.MODELS).")


def for_config(config) -> Optional[Tuple[Any, dict, dict]]:
  """(params, config JSON, meta) of `config.init_from`'s model, checked
  against `config`; None when init_from is empty."""
  name = parse(config_lib.typed(config).init_from)
  if name is None:
    return None
  e = entry(name)
  params, config_json, meta = read(e.path(name), e.sha256)
  check_compatible(config, config_json, name)
  return params, config_json, meta


def trained(name: str, config=None):
  """Shipped model `name` as a `jaxdiff.trained.Trained` (its own config,
  or `config`, which must describe the same network)."""
  from jaxdiff import trained as trained_lib  # pylint: disable=g-import-not-at-top
  if config is None:
    _, _, config = load(name)
  config = config_lib.from_json(config_lib.to_json(config))
  config.init_from = PREFIX + name
  return trained_lib.restore(config, "")


CHECK_SIGMA = 0.3  # noise level of `check`


def check(config, params, images: np.ndarray, *, seed: int = 0) -> float:
  """Mean PSNR [dB] of the one-step Tweedie denoiser (unconditional for a
  conditional model) on uint8 `images` [N, H, W, C] with Gaussian noise of
  std CHECK_SIGMA, unclipped: the figure `export` records for the stored
  and the float32 weights, and the tests recompute."""
  from jaxdiff import data as data_lib  # pylint: disable=g-import-not-at-top
  from jaxdiff import denoiser  # pylint: disable=g-import-not-at-top
  from jaxdiff.inverse import protocol  # pylint: disable=g-import-not-at-top
  from jaxdiff.train import state as state_lib  # pylint: disable=g-import-not-at-top
  s = config_lib.typed(config)
  process = config_lib.build_process(s)
  apply_fn = state_lib.make_apply_fn(config_lib.build_model(s))
  param = config_lib.build_parameterization(s)
  x = jnp.asarray(data_lib.to_model_range(images))
  y = protocol.measure(jax.random.key(seed), x, CHECK_SIGMA, clip=False)
  t = protocol.matched_time(process, CHECK_SIGMA)
  denoise_fn = denoiser.model_denoiser(apply_fn, params, process, param,
                                       num_classes=s.data.num_classes)
  x0 = jnp.clip(protocol.tweedie(process, denoise_fn, y, t), -1.0, 1.0)
  return float(jnp.mean(protocol.image_metrics(x0, x)["psnr"]))


def check_images(config, data_dir: Optional[str] = None, num: int = 32
                 ) -> np.ndarray:
  """The first `num` test images of the config's data set (uint8)."""
  from jaxdiff import data as data_lib  # pylint: disable=g-import-not-at-top
  d = config_lib.typed(config).data
  if data_dir:
    d = dataclasses.replace(d, data_dir=data_dir)
  return data_lib.config_split(d, "test", num).images


def _main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from jaxdiff import trained as trained_lib  # pylint: disable=g-import-not-at-top
  cfg = flags.FLAGS.config
  t = trained_lib.restore(cfg, flags.FLAGS.workdir)
  path = os.path.join(flags.FLAGS.out_dir or ASSET_DIR,
                      f"{flags.FLAGS.name}.npz")
  images = check_images(cfg, cfg.data.data_dir or None)
  stored = jax.tree.map(
      lambda a: jnp.asarray(a, flags.FLAGS.dtype).astype(jnp.float32),
      t.params)
  psnr = dict(float32=check(cfg, t.params, images),
              stored=check(cfg, stored, images), images=len(images),
              sigma=CHECK_SIGMA)
  meta = dict(step=t.step, source=flags.FLAGS.workdir, dtype=flags.FLAGS.dtype,
              check_psnr=psnr)
  digest = export(cfg, t.params, path, meta=meta, dtype=flags.FLAGS.dtype)
  print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB, step {t.step}, "
        f"Tweedie PSNR on {len(images)} test images at sigma "
        f"{CHECK_SIGMA}: {psnr['float32']:.3f} dB (float32), "
        f"{psnr['stored']:.3f} dB ({flags.FLAGS.dtype}); sha256 {digest}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "The run's config.")
  flags.DEFINE_string("workdir", None, "The training run to export.")
  flags.DEFINE_string("name", None, "The model's name (file <name>.npz).")
  flags.DEFINE_string("out_dir", "", "Where to write (default ASSET_DIR).")
  flags.DEFINE_string("dtype", "float16", "Stored dtype of the weights.")
  flags.mark_flags_as_required(["config", "workdir", "name"])
  app.run(_main)
