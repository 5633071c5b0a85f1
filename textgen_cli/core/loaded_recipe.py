"""A validated recipe with where it came from, and the hashes that identify what it trains.

Here in core, below everything that takes a recipe; loading and validating one is `recipe.py`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from textgen_cli.core.schema import Recipe
from textgen_cli.core.stages import STAGE_TABLE, lineage


def settings_digest(values: dict[str, Any]) -> str:
    """A short hash of resolved recipe values (as `LoadedRecipe.to_dict` gives them): the settings
    hash, the stage hash and the eval hash are all this one function, so that a run made before a
    change of code is still found (`textgen compare` reuses runs and evaluations by these hashes)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LoadedRecipe:
    """A validated recipe, with where it came from."""

    recipe: Recipe
    path: Path
    overrides: list[str]

    @property
    def name(self) -> str:
        return self.recipe.run.name or self.path.stem

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self.recipe))

    def to_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(OmegaConf.structured(self.recipe))  # type: ignore[return-value]

    def settings_hash(self) -> str:
        """Hash of the resolved settings: equal hashes mean the same experiment."""
        return settings_digest(self.to_dict())

    def stage_hash(self, stage: str) -> str:
        """Hash of the settings that shape `stage`'s model, chained through the stages before it:
        equal hashes mean a finished stage can be reused (`textgen compare` does)."""
        values = self.to_dict()
        parts: dict[str, Any] = {}
        for name in lineage(stage):
            for dotted in STAGE_TABLE[name].hash_keys:
                node: Any = values
                for key in dotted.split("."):
                    node = node[key]
                parts[dotted] = node
        return settings_digest(parts)

    def run_dir(self, stage: str) -> Path:
        return Path(self.recipe.run.root) / self.name / stage
