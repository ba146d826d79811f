"""Networks by name. A network maps (x [B,H,W,C], t [B] in [0,1], y) -> eps."""
from jaxdiff.models.cnn import CNN
from jaxdiff.models.unet import UNet
from jaxdiff.registry import Registry

MODELS = Registry("model")
MODELS.register("unet")(UNet)
MODELS.register("cnn")(CNN)


def make_model(name: str, **kwargs):
  """Builds a network by name with keyword hyper-parameters."""
  cls = MODELS.get(name)
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ValueError(f"Bad hyper-parameters for model {name!r}: {e}") from None


__all__ = ["CNN", "UNet", "MODELS", "make_model"]
