"""`train.stages`: a run trained in stages one after the other (3D-BERL's FR-only, aux-only, joint), owned here: its
entries are parsed and checked (config), planned as epoch ranges, and checked against the trainer's plug-ins.

A stage: epochs (required, >= 1), name, freeze (parts the main optimizer leaves alone, default none: "backbone",
"head", or "batch_norm", the backbone's batch normalization only: statistics and scale/offset kept, inference mode),
identity_loss (default true), plugins (names of the regularizers and branches that run, default all).
`train.epochs` becomes the stages' sum; `FaceTrainer.set_stage(**stage.arguments())` applies one.
"""
import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Tuple

from tfface.errors import ConfigError
from tfface.training import fields as check

FREEZABLE_PARTS = ("backbone", "head", "batch_norm")


@dataclasses.dataclass
class Stage(check.Section):
    epochs: int
    name: str = ""
    freeze: List[str] = dataclasses.field(default_factory=list)
    identity_loss: bool = True
    plugins: Optional[List[str]] = None

    def arguments(self) -> Dict[str, Any]:
        """FaceTrainer.set_stage's arguments."""
        return {"frozen": tuple(self.freeze), "identity_loss": self.identity_loss, "plugins": self.plugins}


STAGE_KEYS = tuple(spec.name for spec in dataclasses.fields(Stage))
_CHECKS = {
    "epochs": check.integer(1, check.MAX_EPOCHS),
    "name": check.Check("a string", lambda value: isinstance(value, str)),
    "freeze": check.names_from(FREEZABLE_PARTS),
    "identity_loss": check.boolean,
    "plugins": check.optional(check.names),
}


def parse_stages(key: str, value) -> List[Stage]:
    """The `train.stages` list of maps -> Stages; a ConfigError names the stage and key of a bad entry."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: {value!r} is not allowed (expected a list of stages)")
    stages = []
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if isinstance(entry, Stage):
            entry = dataclasses.asdict(entry)
        if not isinstance(entry, dict) or "epochs" not in entry:
            raise ConfigError(f"{where}: each stage needs 'epochs', got {entry!r}")
        unknown = set(entry) - set(STAGE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(STAGE_KEYS)}")
        stages.append(Stage(**{name: _CHECKS[name](f"{where}.{name}", item) for name, item in entry.items()}))
    return stages


def plan(stages: List[Stage], epochs: int) -> List[Tuple[int, int, Optional[Stage]]]:
    """(first epoch, end epoch, stage) per stage; one (0, epochs, None) without stages."""
    if not stages:
        return [(0, epochs, None)]
    result, first = [], 0
    for stage in stages:
        result.append((first, first + stage.epochs, stage))
        first += stage.epochs
    return result


def check_plugins(stages: List[Stage], configured: Iterable[str]) -> None:
    """A ConfigError naming the stage whose `plugins` names a regularizer or branch the run does not have."""
    known = set(configured)
    for index, stage in enumerate(stages):
        unknown = set(stage.plugins or ()) - known
        if unknown:
            raise ConfigError(
                f"train.stages[{index}].plugins: unknown plug-in(s) {', '.join(sorted(unknown))}; configured: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
