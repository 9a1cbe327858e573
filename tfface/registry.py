"""A name -> builder registry shared by backbones, heads, regularizers and branches."""
from typing import Callable, Dict, List

from tfface.errors import ConfigError


class Registry:
    """Maps names to builder callables; unknown names raise one clear error listing the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        """Decorator: `@REGISTRY.register("iresnet50")` above a builder function or class."""

        def decorator(builder: Callable) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def available(self) -> List[str]:
        return sorted(self._builders)

    def get(self, name: str) -> Callable:
        if name not in self._builders:
            raise ConfigError(f"unknown {self.kind} '{name}'; available: {', '.join(self.available())}")
        return self._builders[name]

    def build(self, name: str, /, **options):
        """Builds `name` with `options`; an option the builder does not take is named in the error."""
        builder = self.get(name)
        try:
            return builder(**options)
        except TypeError as error:
            if "unexpected keyword argument" in str(error):
                raise ConfigError(f"{self.kind} '{name}': {error}") from None
            raise
