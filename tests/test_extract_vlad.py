"""vlad-aliked features with the vocabulary learned from the same extraction: ALIKED runs once per image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visloc.data.castle import CASTLE_ROOT
from visloc.features.learned import ALIKED
from visloc.io import features_h5
from visloc.localization.datasets import castle_split
from visloc.pipelines.extract import extract_features
from visloc.pipelines.extract_vlad import extract_vlad_features, staging_file
from visloc.pipelines.map_build import build_map
from visloc.pipelines.vocab import build_vocabulary
from visloc.retrieval.vlad import load_vocabulary

SMALL = {"max_num_keypoints": 256, "resize_max": 320}


@pytest.fixture
def aliked_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The real ALIKED, wrapped to count the images it is run on (one entry per call: its batch size)."""
    calls: list[int] = []
    forward = ALIKED.forward

    def counted(self: ALIKED, image):
        calls.append(int(image.shape[0]))
        return forward(self, image)

    monkeypatch.setattr(ALIKED, "forward", counted)
    return calls


def test_one_extraction_gives_the_two_pass_vocabulary_and_features(photo_dir, photo_names, tmp_path, aliked_images):
    out, vocab = tmp_path / "features.h5", tmp_path / "vocab.pt"
    names = list(photo_names)
    ov, summary = extract_vlad_features(photo_dir, out, vocab, overrides={**SMALL, "num_clusters": 8},
                                        image_list=names, vocab_images=100, progress=False)
    assert sum(aliked_images) == len(names) and summary.done == len(names)  # each photo once
    assert not staging_file(out).exists() and ov["vocabulary"] == str(vocab.resolve())

    # the two-pass way: visloc vocab (ALIKED on every photo), then vlad-aliked (ALIKED again)
    build_vocabulary(photo_dir, tmp_path / "two_pass.pt", num_clusters=8, overrides=SMALL, progress=False)
    np.testing.assert_allclose(load_vocabulary(vocab).centroids, load_vocabulary(tmp_path / "two_pass.pt").centroids,
                               atol=1e-5)
    extract_features(photo_dir, tmp_path / "ref.h5", extractor="vlad-aliked",
                     overrides={**SMALL, "num_clusters": 8, "vocabulary": str(vocab)}, progress=False)
    assert sum(aliked_images) == 3 * len(names)
    for name in names:
        got, ref = features_h5.read_features(out, name), features_h5.read_features(tmp_path / "ref.h5", name)
        assert set(got) == set(ref)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], atol=1e-5, err_msg=f"{name}: {key}")
    record = json.loads(features_h5.read_attrs(out)["visloc_extractor"])
    assert record["name"] == "vlad-aliked" and record["conf"]["vocabulary"] == str(vocab.resolve())


def test_rerun_extracts_nothing(photo_dir, photo_names, tmp_path, aliked_images):
    kwargs = {"overrides": {**SMALL, "num_clusters": 8}, "image_list": list(photo_names), "vocab_images": 2,
              "progress": False}
    extract_vlad_features(photo_dir, tmp_path / "f.h5", tmp_path / "v.pt", **kwargs)
    assert load_vocabulary(tmp_path / "v.pt").source["images"] == 2  # vocab_images of the 3, evenly spaced
    _, again = extract_vlad_features(photo_dir, tmp_path / "f.h5", tmp_path / "v.pt", **kwargs)
    assert (again.done, again.already_done, sum(aliked_images)) == (0, 3, 3)


@pytest.mark.skipif(not (CASTLE_ROOT / "Images").is_dir(), reason=f"{CASTLE_ROOT} missing (visp-images-data)")
def test_map_build_runs_aliked_once_per_database_image(tmp_path, aliked_images):
    split = castle_split(tmp_path / "data", step=8, max_queries=1)
    summary = build_map(split.db_images, tmp_path / "map", poses=split.db_poses, cameras=split.db_cameras,
                        extractor_overrides=SMALL, num_pairs=2, progress=False)
    assert summary.num_images >= 5 and sum(aliked_images) == summary.num_images
    assert (tmp_path / "map" / "vocab.pt").is_file() and not (tmp_path / "map" / "features.aliked.h5").exists()
