"""Named, versioned training recipes: what `vla train --recipe NAME` starts from.

A recipe is a partial ``TrainConfig`` (training length, batch, model width, chunking, head)
plus the observation it is meant for. The features are not written into the recipe: they
come from the dataset (a state recipe reads every vector feature the dataset has, an image
recipe adds every camera and the instruction), so one recipe serves any task.

A config is, field by field: the dataclass default < the recipe < ``--config`` < flags.
A recipe is never edited once published: a changed recipe gets a new version (``-v2``), so a
run's ``config.json`` (which records the recipe name) keeps meaning what it meant. What was
tried and why these values won: docs/recipes.md.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vla import keys
from vla.registry import Registry

Observation = Literal["state", "image"]


@dataclass(frozen=True)
class Recipe:
    observation: Observation
    description: str
    train: Mapping[str, Any] = field(default_factory=dict)  # partial TrainConfig, nested "policy" dict

    def overrides_for(self, features: Mapping[str, Any], tasks: Sequence[str] = ()) -> dict[str, Any]:
        """The recipe's TrainConfig overrides with the input features a dataset with
        ``features`` (name -> LeRobot feature spec) offers for this observation kind. A dataset
        of several tasks (``tasks``: its instructions) also conditions on the instruction,
        which is then the only thing that tells the tasks apart."""
        overrides = copy.deepcopy(dict(self.train))
        policy = overrides.setdefault("policy", {})
        vectors = [k for k in (keys.OBS_STATE, keys.OBS_ENV_STATE) if k in features]
        if self.observation == "state":
            if keys.OBS_ENV_STATE not in features:
                raise ValueError(
                    f"a state recipe needs {keys.OBS_ENV_STATE} (object poses) in the dataset; it has "
                    f"{', '.join(sorted(features))}. Collect with --obs-mode state or rgb (both record it)."
                )
            policy["vector_features"] = vectors
            if len(tasks) > 1:
                policy.setdefault("use_language", True)
        else:
            cameras = sorted(k for k in features if k.startswith(keys.OBS_IMAGE_PREFIX))
            if not cameras:
                raise ValueError(
                    f"an image recipe needs camera features ({keys.OBS_IMAGE_PREFIX}*); the dataset has "
                    f"{', '.join(sorted(features))}. Collect with --obs-mode rgb, or use a state recipe."
                )
            policy["vector_features"] = [keys.OBS_STATE]
            policy["image_features"] = cameras
            policy.setdefault("use_language", True)
        return overrides


RECIPES: Registry[Recipe] = Registry("recipe")

# The README's first state recipe (measured on Lift: 93-100%), kept as the reference point.
RECIPES.add(
    "state-dm1-small-v1",
    Recipe(
        "state",
        "DM1 (one-step MeanFlow), d_model 64, 2 expert layers, 3,000 steps at batch 128: ~2 min on 2 cores",
        {
            "steps": 3000,
            "batch_size": 128,
            "policy": {"head": "meanflow", "d_model": 64, "n_expert_layers": 2},
        },
    ),
)

_STATE_V1 = {
    "steps": 15000,
    "batch_size": 128,
    "save_every": 5000,
    "policy": {"d_model": 64, "n_expert_layers": 2, "chunk_size": 8, "n_action_steps": 4},
}
RECIPES.add(
    "state-dm1-v1",
    Recipe(
        "state",
        "DM1 (1 NFE), d_model 64, 2 expert layers, chunks of 8 executing 4, 15,000 steps at batch 128",
        {**_STATE_V1, "policy": {**_STATE_V1["policy"], "head": "meanflow"}},
    ),
)
RECIPES.add(
    "state-fm-v1",
    Recipe(
        "state",
        "flow matching (10 NFE), otherwise state-dm1-v1",
        {**_STATE_V1, "policy": {**_STATE_V1["policy"], "head": "flow_matching"}},
    ),
)

# The image + language configuration measured on Lift with DART data (96% DM1, 98% flow matching).
RECIPES.add(
    "image-dm1-small-v1",
    Recipe(
        "image",
        "DM1, every camera + state + instruction, conv encoder with random shift, d_model 64, 2 expert layers, "
        "2,000 steps at batch 64: ~10 min on 2 cores",
        {
            "steps": 2000,
            "batch_size": 64,
            "save_every": 500,
            "policy": {"head": "meanflow", "d_model": 64, "n_expert_layers": 2},
        },
    ),
)


def recipe_overrides(name: str, dataset: str | Path) -> dict[str, Any]:
    """The TrainConfig overrides of recipe ``name`` for the LeRobot dataset at ``dataset``
    (an unknown name lists the recipes; the dataset's features are read from its metadata only)."""
    from vla.datasets.lerobot_io import dataset_info

    recipe = RECIPES.get(name)
    info = dataset_info(dataset)
    overrides = recipe.overrides_for(info["features"], info["tasks"])
    overrides["recipe"] = name
    return overrides
