"""Registries by name: models, SDEs, samplers, data sets, operators.

Adding a component is one decorated function::

    SAMPLERS = Registry("sampler")

    @SAMPLERS.register("ddim")
    def ddim_step(...): ...

    SAMPLERS.get("ddim")  # -> ddim_step; an unknown name lists the known ones.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A name -> object mapping with helpful errors."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: Dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator registering `obj` under `name`."""
    def decorator(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is already registered.")
      self._items[name] = obj
      return obj
    return decorator

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      known = ", ".join(sorted(self._items)) or "(none)"
      raise ValueError(
          f"Unknown {self.kind} {name!r}. Known: {known}.") from None

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))

  def names(self):
    return sorted(self._items)
