"""Name -> class registries for degradations, guidance methods, schedules and baselines."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from gdr.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """A dict of named factories with a decorator to fill it and a `build` that explains failures."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self[name] = obj
            return obj

        return deco

    def get_factory(self, name: str):
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]

    def build(self, name: str, /, **kwargs: Any):  # positional-only: a factory may take a `name` of its own
        """Instantiate `name` with `kwargs`.

        An unknown name, or parameters the factory does not take, raise a one-line `ConfigError` before the
        call; whatever the factory itself raises (its own range checks, or a bug) goes through as it is.
        """
        factory = self.get_factory(name)
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as exc:
            params = [p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")]
            raise ConfigError(f"{self.kind} {name!r}: {exc}; it takes: {', '.join(params) or 'no parameters'}") \
                from None
        return factory(**kwargs)
