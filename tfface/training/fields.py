"""Typed config fields: a default and a check per field. A check takes (key, value) and returns the value in its
type, or raises a ConfigError naming the key, the value and what is allowed:

    train.epochs: 'ten' is not allowed (expected an integer >= 1 and <= 100000)
"""
import copy
import dataclasses
import math
from typing import Any, Callable, Dict, Sequence

from tfface.errors import ConfigError, shown

class Check:
    """allowed: what the check takes, in words; accepts(value) -> bool; convert(value) -> the typed value."""

    def __init__(self, allowed: str, accepts: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda v: v):
        self.allowed = allowed
        self.accepts = accepts
        self.convert = convert

    def __call__(self, key: str, value):
        if not self.accepts(value):
            raise ConfigError(f"{key}: {shown(value)} is not allowed (expected {self.allowed})")
        return self.convert(value)


def field(default, check: Check):
    """A dataclass field with `default` (lists and maps copied per instance) and its check."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


def section(cls):
    """A dataclass field holding a nested Section, built from the map under its key."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


class Section:
    """Base of the config's dataclasses: `from_dict` checks every value once; `config["train"]["epochs"]` reads
    `config.train.epochs` (for scripts that index the config like a map)."""

    @classmethod
    def from_dict(cls, values: Dict[str, Any], prefix: str = ""):
        if not isinstance(values, dict):
            raise ConfigError(f"{prefix.rstrip('.')}: {shown(values)} is not allowed (expected a mapping)")
        arguments = {}
        for spec in dataclasses.fields(cls):
            key = f"{prefix}{spec.name}"
            if "section" in spec.metadata:
                arguments[spec.name] = spec.metadata["section"].from_dict(values.get(spec.name, {}), f"{key}.")
            elif spec.name in values:
                arguments[spec.name] = spec.metadata["check"](key, values[spec.name])
        return cls(**arguments)

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested maps and lists (what config.yaml holds)."""
        return dataclasses.asdict(self)

    def __getitem__(self, key: str):
        return getattr(self, key)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)  # an int of any size is finite (and beyond a float)


text = Check("a non-empty string", lambda value: isinstance(value, str) and bool(value))
boolean = Check("true or false", lambda value: isinstance(value, bool))
mapping = Check("a mapping", lambda value: isinstance(value, dict))
names = Check("a list of names", lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value))
plugin_list = Check(
    "a list of mappings, each with a name",
    lambda value: isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value),
)
# upper bounds of the numeric keys: far beyond any real run, far below values that overflow or exhaust memory
MAX_EPOCHS = 100_000
MAX_LEARNING_RATE = 1e6
MAX_IMAGE_SIDE = 4096  # pixels: far above any face crop, far below what fills a host's memory


def _is_side(value) -> bool:
    return _is_int(value) and 1 <= value <= MAX_IMAGE_SIDE


size = Check(
    f"an integer >= 1 and <= {MAX_IMAGE_SIDE} or a pair [height, width] of them",
    lambda value: _is_side(value) or (isinstance(value, list) and len(value) == 2 and all(map(_is_side, value))),
    lambda value: [value, value] if _is_int(value) else list(value),
)


def integer(low: int, high: int) -> Check:
    """An integer in [low, high]: every count has a sane upper bound."""
    return Check(f"an integer >= {low} and <= {high}", lambda value: _is_int(value) and low <= value <= high)


def number(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite number in [low, high] (an open end with low_open / high_open), returned as float."""
    bounds = f"{'>' if low_open else '>='} {low:g} and {'<' if high_open else '<='} {high:g}"

    def accepts(value) -> bool:
        if not _is_number(value) or value < low or (low_open and value == low):
            return False
        return value < high or (value == high and not high_open)

    return Check(f"a finite number {bounds}", accepts, float)


def numbers(low: float, high: float) -> Check:
    element = number(low, high)
    return Check(f"a list of finite numbers >= {low:g} and <= {high:g}",
                      lambda value: isinstance(value, list) and all(element.accepts(v) for v in value),
                      lambda value: [float(v) for v in value])


def choice(values: Sequence) -> Check:
    listed = ", ".join(str(value) for value in values)
    return Check(f"one of {listed}", lambda value: any(type(value) is type(v) and value == v for v in values))


def names_from(allowed: Sequence[str]) -> Check:
    return Check(f"a list of names from {', '.join(allowed)}",
                      lambda value: isinstance(value, list) and all(v in allowed for v in value))


def factors_for(parts: Sequence[str], low: float, high: float) -> Check:
    """A map {part: factor} over some of `parts`, each factor a finite number in (low, high], returned as floats."""
    factor = number(low, high, low_open=True)
    return Check(f"a map from {', '.join(parts)} to finite numbers > {low:g} and <= {high:g}",
                 lambda value: isinstance(value, dict)
                 and all(k in parts and factor.accepts(v) for k, v in value.items()),
                 lambda value: {k: float(v) for k, v in value.items()})


def optional(check: Check) -> Check:
    return Check(f"{check.allowed}, or null", lambda value: value is None or check.accepts(value),
                      lambda value: None if value is None else check.convert(value))


def one_of(*checks: Check) -> Check:
    def convert(value):
        return next(check for check in checks if check.accepts(value)).convert(value)

    return Check(" or ".join(check.allowed for check in checks),
                      lambda value: any(check.accepts(value) for check in checks), convert)
