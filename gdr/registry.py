"""Name -> class registries for degradations, guidance methods, schedules and baselines."""

from __future__ import annotations

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

    def build(self, name: str, **kwargs: Any):
        """Instantiate `name` with `kwargs`; unknown names and bad parameters raise one-line `ConfigError`s."""
        factory = self.get_factory(name)
        try:
            return factory(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{self.kind} {name!r}: {exc}") from None
