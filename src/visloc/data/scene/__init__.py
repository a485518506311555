"""A built-in rendered street scene: textured planes with real photos, exact depth and poses, query conditions.

Nothing is downloaded: textures come from ``skimage.data``. See :mod:`visloc.data.scene.generate` for the
files written, :mod:`visloc.data.scene.render` for the camera conventions.
"""

from visloc.data.scene.conditions import (
    CONDITION_PRESETS,
    ConditionConf,
    ConditionModel,
    apply_condition,
    apply_conditions,
    blur,
    condition_name,
    night,
    parse_condition,
)
from visloc.data.scene.config import BlurConf, NightConf, OffsetConf, SceneConf, load_scene_conf
from visloc.data.scene.flow import FlowField, map_pixels
from visloc.data.scene.generate import SceneFiles, generate_scene, read_conditions
from visloc.data.scene.render import Frame, intrinsics, project, render, unproject
from visloc.data.scene.trajectory import db_poses, pose_from_heading, query_poses, smooth_walk
from visloc.data.scene.version import GENERATOR_VERSION
from visloc.data.scene.world import Plane, World, build_world, make_plane

__all__ = [
    "CONDITION_PRESETS", "ConditionConf", "ConditionModel", "apply_conditions", "condition_name", "parse_condition",
    "GENERATOR_VERSION", "BlurConf", "FlowField", "Frame", "NightConf", "OffsetConf", "Plane", "SceneConf",
    "SceneFiles", "World", "apply_condition", "blur", "build_world", "db_poses", "generate_scene", "intrinsics",
    "load_scene_conf", "make_plane", "map_pixels", "night", "pose_from_heading", "project", "query_poses",
    "read_conditions", "render", "smooth_walk", "unproject",
]
