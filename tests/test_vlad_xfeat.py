"""``vlad-xfeat``: XFeat's local features plus their VLAD; its vocabulary learned from the map's XFeat descriptors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visloc.cli import app
from visloc.data.castle import CASTLE_ROOT
from visloc.features import EXTRACTORS
from visloc.features.api import extract_image
from visloc.features.vlad import XFEAT_SPEC
from visloc.features.xfeat import XFeat
from visloc.io import features_h5
from visloc.io.images import read_image
from visloc.localization.datasets import castle_split
from visloc.pipelines.extract_vlad import extract_vlad_features, staging_file
from visloc.pipelines.map_build import build_map
from visloc.pipelines.vocab import build_vocabulary
from visloc.retrieval.vlad import VocabularyError, load_vocabulary, save_vocabulary, vlad

SMALL = {"max_num_keypoints": 256, "resize_max": 320}


@pytest.fixture
def xfeat_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The real XFeat, wrapped to count the images it is run on (one entry per call: its batch size)."""
    calls: list[int] = []
    forward = XFeat.forward

    def counted(self: XFeat, image):
        calls.append(int(image.shape[0]))
        return forward(self, image)

    monkeypatch.setattr(XFeat, "forward", counted)
    return calls


def test_local_features_are_xfeats_and_global_is_their_vlad(astronaut_320, tmp_path):
    xfeat = extract_image(EXTRACTORS.build("xfeat", ["max_num_keypoints=512"]), astronaut_320)
    centroids = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    save_vocabulary(tmp_path / "v.pt", centroids, {}, {})
    ex = EXTRACTORS.build("vlad-xfeat", ["max_num_keypoints=512", f"vocabulary={tmp_path / 'v.pt'}",
                                         "num_clusters=8"])
    got = extract_image(ex, astronaut_320)
    assert got.num_keypoints > 100 and got.descriptors.shape[1] == 64
    for key in ("keypoints", "scores", "descriptors"):
        torch.testing.assert_close(getattr(got, key), getattr(xfeat, key), atol=0, rtol=0, msg=key)
    assert got.global_descriptor is not None
    np.testing.assert_allclose(got.global_descriptor.numpy(), vlad(xfeat.descriptors.numpy(), centroids,
                                                                   power_norm=True), atol=1e-6)
    assert EXTRACTORS.capabilities("vlad-xfeat").descriptor == EXTRACTORS.capabilities("xfeat").descriptor


def test_subpixel_reaches_the_local_extractor(astronaut_320, tmp_path):
    sub = extract_image(EXTRACTORS.build("xfeat", ["max_num_keypoints=256", "subpixel=true"]), astronaut_320)
    save_vocabulary(tmp_path / "v.pt", np.eye(8, 64, dtype=np.float32), {}, {})
    ex = EXTRACTORS.build("vlad-xfeat", ["max_num_keypoints=256", "subpixel=true", f"vocabulary={tmp_path / 'v.pt'}",
                                         "num_clusters=8"])
    got = extract_image(ex, astronaut_320)
    torch.testing.assert_close(got.keypoints, sub.keypoints, atol=0, rtol=0)
    assert not torch.equal(got.keypoints, got.keypoints.round())  # refined off the integer pixels


def test_without_a_vocabulary_one_line_error(astronaut_320):
    ex = EXTRACTORS.build("vlad-xfeat")  # builds, so that it can be listed and configured
    with pytest.raises(VocabularyError) as err:
        extract_image(ex, astronaut_320)
    assert "\n" not in str(err.value) and "visloc vocab IMAGES --out vocab.pt --extractor vlad-xfeat" in str(err.value)


def test_vocab_cli_for_vlad_xfeat(photo_dir, tmp_path):
    out = tmp_path / "vocab.pt"
    result = CliRunner().invoke(app, ["vocab", str(photo_dir), "--out", str(out), "--clusters", "4",
                                      "--extractor", "vlad-xfeat", "--set", "max_num_keypoints=256"])
    assert result.exit_code == 0, result.output
    assert "4 clusters x 64-d" in result.output
    assert load_vocabulary(out, 4, 64).source["extractor"] == "xfeat"
    result = CliRunner().invoke(app, ["vocab", str(photo_dir), "--out", str(out), "--extractor", "xfeat"])
    assert result.exit_code != 0 and "not a VLAD extractor" in result.output


def test_one_extraction_gives_the_two_pass_vocabulary_and_features(photo_dir, photo_names, tmp_path, xfeat_images):
    out, vocab = tmp_path / "features.h5", tmp_path / "vocab.pt"
    names = list(photo_names)
    ov, summary = extract_vlad_features(photo_dir, out, vocab, overrides={**SMALL, "num_clusters": 8},
                                        image_list=names, vocab_images=100, progress=False, extractor="vlad-xfeat")
    assert sum(xfeat_images) == len(names) and summary.done == len(names)  # each photo once
    assert not any(tmp_path.glob("features.*.h5")) and ov["vocabulary"] == str(vocab.resolve())

    build_vocabulary(photo_dir, tmp_path / "two_pass.pt", num_clusters=8, overrides=SMALL, progress=False,
                     extractor="vlad-xfeat")
    np.testing.assert_allclose(load_vocabulary(vocab, 8, 64).centroids,
                               load_vocabulary(tmp_path / "two_pass.pt", 8, 64).centroids, atol=1e-5)
    ex = EXTRACTORS.build("vlad-xfeat", {**SMALL, "num_clusters": 8, "vocabulary": str(vocab)})
    for name in names:
        ref = extract_image(ex, read_image(photo_dir / name, grayscale=False), resize_max=SMALL["resize_max"])
        got = features_h5.read_features(out, name)
        np.testing.assert_allclose(got["keypoints"], ref.keypoints.numpy(), atol=1e-4, err_msg=name)
        np.testing.assert_allclose(got["global_descriptor"], ref.global_descriptor.numpy(), atol=1e-5, err_msg=name)
    record = json.loads(features_h5.read_attrs(out)["visloc_extractor"])
    assert record["name"] == "vlad-xfeat" and record["conf"]["vocabulary"] == str(vocab.resolve())


@pytest.mark.skipif(not (CASTLE_ROOT / "Images").is_dir(), reason=f"{CASTLE_ROOT} missing (visp-images-data)")
def test_map_build_learns_the_vocabulary_from_its_xfeat_descriptors(tmp_path, xfeat_images):
    split = castle_split(tmp_path / "data", step=8, max_queries=1)
    summary = build_map(split.db_images, tmp_path / "map", poses=split.db_poses, cameras=split.db_cameras,
                        extractor="vlad-xfeat", extractor_overrides=SMALL, matcher="lighterglue", num_pairs=2,
                        progress=False)
    assert summary.num_images >= 5 and sum(xfeat_images) == summary.num_images  # XFeat once per image
    vocab = load_vocabulary(tmp_path / "map" / "vocab.pt", 64, 64)
    assert vocab.source == {"extractor": "xfeat", "images": summary.num_images}
    assert not staging_file(tmp_path / "map" / "features.h5", XFEAT_SPEC).exists()
    record = json.loads((tmp_path / "map" / "map.json").read_text())
    assert record["extractor"]["name"] == record["retrieval"]["name"] == "vlad-xfeat"
    assert not (tmp_path / "map" / "global.h5").exists() and summary.num_points > 100
