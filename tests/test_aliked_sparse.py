"""The sparse ALIKED path gives kornia's outputs (keypoints, scores, descriptors) up to rounding."""

from pathlib import Path

import numpy as np
import pytest
import torch

from visloc.data.homography import synthetic_pairs
from visloc.features import EXTRACTORS
from visloc.io.images import read_image

CASTLE_IMAGE = Path("/usr/share/visp-images-data/ViSP-images/mbt-depth/Castle-simu/Images/Image_0001.pgm")


def _images():
    ims = [p.image0 for p in synthetic_pairs(seed=0, pairs_per_photo=1, photos=("astronaut",))]
    ims.append(synthetic_pairs(seed=1, pairs_per_photo=1, size=(333, 250), photos=("coffee",))[0].image1)
    if CASTLE_IMAGE.exists():
        ims.append(read_image(CASTLE_IMAGE))
    return ims


@pytest.mark.parametrize("model", ["aliked-n16", "aliked-t16"])
def test_sparse_equals_dense(model):
    sparse = EXTRACTORS.build(model)
    dense = EXTRACTORS.build(model, ["sparse_descriptors=false"])
    assert sparse.sparse is not None and dense.sparse is None
    for im in _images():
        x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None]
        a, b = sparse(x), dense(x)
        assert a["keypoints"].shape == b["keypoints"].shape and a["keypoints"].shape[1] > 50
        torch.testing.assert_close(a["keypoints"], b["keypoints"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
        cos = (a["descriptors"] * b["descriptors"]).sum(-1)
        assert cos.min() > 0.9999


def test_sparse_rejects_batches():
    ex = EXTRACTORS.build("aliked-n16")
    with pytest.raises(ValueError, match="B=2"):
        ex.sparse(torch.rand(2, 3, 64, 64))
