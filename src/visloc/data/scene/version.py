"""The version of the scene generator, recorded beside every rendering (``generator.yaml``).

A rendering is a pure function of its conf (``SceneConf``, or ``CitySceneConf`` for the demo's city) and of
this package's code (world or city layout, textures, renderer, trajectories, query conditions). ``scene.yaml``
records the conf; ``GENERATOR_VERSION`` stands for the code: bump it in any change that alters the images,
depths, poses or conditions written for the same conf, so that a stored rendering (``visloc demo`` reuses one
whose record matches) is rendered again instead of being reused stale.
"""

from __future__ import annotations

from pathlib import Path

import yaml

#: bump on every change of the rendered output for a given conf (see the module docstring); 2: the demo's
#: city scene (``generate_city_scene``); 3: city textures without the evaluation photos
GENERATOR_VERSION = 3
#: the record's file name, beside ``scene.yaml`` in the scene's root
GENERATOR_RECORD = "generator.yaml"


def generator_record() -> dict[str, object]:
    """What ``generate_scene`` writes to ``GENERATOR_RECORD``."""
    return {"generator": "visloc.data.scene", "version": GENERATOR_VERSION}


def read_generator_version(root: str | Path) -> int | None:
    """The generator version recorded in the scene folder ``root``; None when absent or unreadable."""
    path = Path(root) / GENERATOR_RECORD
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
