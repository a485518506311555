"""Batched extraction (``batch_size > 1``) gives the features of one-by-one extraction, per batched extractor."""

from __future__ import annotations

import numpy as np
import pytest

from visloc.io import features_h5
from visloc.pipelines.extract import extract_features

#: the extractors whose forward takes B > 1 (ALIKED is also covered on odd sizes in test_pipelines)
BATCHED = ("aliked-n16", "xfeat", "hfnet", "disk")


@pytest.mark.parametrize("extractor", BATCHED)
def test_batch_of_three_equals_one_by_one(extractor, photo_dir, photo_names, tmp_path):
    ov = {"resize_to": (320, 240), "max_num_keypoints": 512}  # three real photos of one size: one batch of 3
    single = extract_features(photo_dir, tmp_path / "single.h5", extractor=extractor, overrides=ov, num_workers=0,
                              progress=False)
    batched = extract_features(photo_dir, tmp_path / "batched.h5", extractor=extractor, overrides=ov,
                               batch_size=3, num_workers=0, progress=False)
    assert single.done == batched.done == len(photo_names)
    for name in photo_names:
        a = features_h5.read_features(tmp_path / "single.h5", name)
        b = features_h5.read_features(tmp_path / "batched.h5", name)
        assert set(a) == set(b) and np.array_equal(a["image_size"], b["image_size"])
        assert len(a["keypoints"]) == len(b["keypoints"]) > 50, name
        for key in a:
            np.testing.assert_allclose(b[key], a[key], atol=1e-4, err_msg=f"{extractor} {name}: {key}")
