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
        (a,), (b,) = sparse(x), dense(x)
        assert a.keypoints.shape == b.keypoints.shape and a.num_keypoints > 50
        torch.testing.assert_close(a.keypoints, b.keypoints, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
        cos = (a.descriptors * b.descriptors).sum(-1)
        assert cos.min() > 0.9999


def test_sparse_batch_equals_single_images():
    # SparseALIKED takes B images: the network runs on the batch, the descriptor head per image
    ex = EXTRACTORS.build("aliked-n16")
    ims = [p.image0 for p in synthetic_pairs(seed=2, pairs_per_photo=1, photos=("astronaut", "coffee"))]
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) for im in ims])
    batched = ex.sparse(x)
    assert len(batched) == 2
    for b, (kp, sc, desc) in enumerate(batched):
        kp1, sc1, desc1 = ex.sparse(x[b:b + 1])[0]
        assert kp.shape == kp1.shape and kp.shape[0] > 50 and desc.shape == (kp.shape[0], 128)
        torch.testing.assert_close(kp, kp1, atol=1e-3, rtol=0)
        torch.testing.assert_close(sc, sc1, atol=1e-4, rtol=0)
        assert (desc * desc1).sum(-1).min() > 0.9999
    # not the same image twice: the two results differ
    assert batched[0][0].shape != batched[1][0].shape or not torch.allclose(batched[0][0], batched[1][0])
