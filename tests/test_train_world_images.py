"""The HF-Net recipe trains from a folder of world images (``data.folders``: a ``distill`` dataset's images)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from visloc.data.scene.city_conf import CityConf
from visloc.data.world.distill import DistillConf, generate_distill
from visloc.train.core import train
from visloc.train.hfnet.data import training_images
from visloc.train.recipe_base import load_recipe_conf, recipe_conf

ROOT = Path(__file__).resolve().parents[1]
SMALL = CityConf(num_streets_x=3, num_streets_y=4, block_length_m=40.0, block_depth_m=30.0, px_per_m=16.0,
                 ground_px_per_m=8.0, split=(0.34, 0.33, 0.33), extra_photos=False)


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 distill views of the train split, 128 x 96."""
    out = tmp_path_factory.mktemp("distill")
    generate_distill(DistillConf(city=SMALL, num_views=8, width=128, height=96, focal=100.0), out, split="train",
                     progress=False)
    return out / "images"


def test_world_student_config_reads_only_the_train_split_images() -> None:
    name, conf = load_recipe_conf(ROOT / "configs" / "hfnet_world_student.yaml")
    assert name == "hfnet-distill" and not conf.data.builtin and not conf.data.lists
    assert conf.data.folders == ("outputs/world/distill_train/images",)
    default = load_recipe_conf(ROOT / "configs" / "hfnet_default_student.yaml")[1]
    assert conf.student == default.student and conf.teacher == replace(default.teacher, vocab_images=128)
    assert conf.train.checkpoint_every == 100


def test_a_folder_of_views_gives_every_image_once(views: Path) -> None:
    conf = recipe_conf("hfnet-distill", [f"data.folders=[{views}]"]).data
    names = training_images(conf)
    assert names == [str(views / f"{i:06d}.jpg") for i in range(8)]  # views.csv and world.yaml are not images


@pytest.mark.slow
def test_a_short_run_on_eight_views_learns(views: Path, tmp_path: Path) -> None:
    conf = recipe_conf("hfnet-distill", [
        f"run_dir={tmp_path / 'run'}", f"data.folders=[{views}]", "data.size=[64,64]", "data.repeat=8",
        "teacher.vocab_images=8", "teacher.vlad_clusters=4", "student.model.global_dim=512",
        "train.batch_size=4", "train.max_steps=40", "train.lr=0.003", "train.warmup_steps=0", "train.log_every=1",
        "train.checkpoint_every=20", "train.image_every=0", "train.threads=1", "train.seed=0",
    ])
    result = train("hfnet-distill", conf, progress=False)
    assert result.global_step == 40 and result.exported is not None and result.exported.is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    total = [e.value for e in acc.Scalars("train/total")]
    cosine = [e.value for e in acc.Scalars("train/desc_cosine")]
    assert len(total) == 40
    # measured (seeds 0, 1; first vs last 10 steps): total 5.40 -> 3.46 / 5.44 -> 3.73, cosine 0.43 -> 0.60 / 0.58
    assert np.mean(total[-10:]) < 0.8 * np.mean(total[:10])
    assert np.mean(cosine[-10:]) > np.mean(cosine[:10]) + 0.08
