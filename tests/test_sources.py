"""ImageSource: decoded and resized as extract_array does, bad images as records, size-bucketed batches."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from visloc.errors import InputError
from visloc.io import sources
from visloc.io.images import read_image, resize_image
from visloc.io.sources import ImageSource, ResizeSpec, SizeBatchSampler, collate_images, image_loader


@pytest.fixture()
def photos_and_bad(photo_dir, tmp_path, photo_names):
    root = tmp_path / "photos"
    shutil.copytree(photo_dir, root)
    (root / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    return root, [*photo_names, "bad.jpg", "missing.png"]


def _sized_folder(tmp_path, sizes):
    rng = np.random.default_rng(0)
    names = []
    for i, (w, h) in enumerate(sizes):
        name = f"{i}.png"
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        names.append(name)
    return names


def test_records_match_extract_array_resizing(photos_and_bad, photo_names):
    root, names = photos_and_bad
    spec = ResizeSpec(resize_max=200)
    source = ImageSource(root, names, spec)
    assert len(source) == 5
    for i, name in enumerate(photo_names):
        rec = source[i]
        assert (rec.index, rec.name, rec.error) == (i, name, None)
        ref = resize_image(read_image(root / name), resize_max=200)
        assert rec.original_size == ref.original_size
        assert rec.scale == ref.scale
        assert max(rec.image.shape[1:]) == 200 and rec.image.dtype == torch.float32
        np.testing.assert_array_equal(rec.image.numpy(), ref.image.transpose(2, 0, 1))


def test_bad_and_missing_images_are_error_records(photos_and_bad):
    root, names = photos_and_bad
    source = ImageSource(root, names, ResizeSpec(resize_max=200))
    bad, missing = source[3], source[4]
    assert bad.image is None and bad.name == "bad.jpg"
    assert bad.error is not None and "bad.jpg" in bad.error and "not an image" in bad.error
    assert missing.image is None and "missing.png: file not found" in (missing.error or "")


def test_grayscale_and_resize_to(photo_dir, photo_names):
    source = ImageSource(photo_dir, photo_names, ResizeSpec(resize_to=(64, 48), grayscale=True))
    rec = source[1]
    assert tuple(rec.image.shape) == (1, 48, 64)
    w, h = rec.original_size
    assert rec.scale == (w / 64, h / 48)
    assert source.target_sizes() == [(64, 48)] * 3


def test_spec_from_conf_and_checks():
    @dataclass(frozen=True)
    class Conf:
        resize_max: int | None = 1024
        resize_to: tuple[int, int] | None = None

    assert ResizeSpec.from_conf(Conf()) == ResizeSpec(1024)
    assert ResizeSpec.from_conf(Conf(None, (640, 480))).resize_to == (640, 480)
    assert ResizeSpec.from_conf(object()) == ResizeSpec()  # a conf without resize fields
    assert ResizeSpec(100).target_size(400, 300) == (100, 75)
    assert ResizeSpec(1000).target_size(400, 300) == (400, 300)  # never enlarges
    with pytest.raises(InputError, match="resize_to"):
        ResizeSpec(resize_to=(4, 4))


def test_sampler_groups_equal_resized_sizes(tmp_path):
    sizes = [(64, 48), (64, 48), (48, 64), (64, 48), (48, 64), (100, 20)]
    names = _sized_folder(tmp_path, sizes)
    source = ImageSource(tmp_path, names)
    assert source.target_sizes() == sizes
    assert SizeBatchSampler(source.target_sizes(), 2).batches == [[0, 1], [2, 4], [3], [5]]
    assert SizeBatchSampler(source.target_sizes(), 8).batches == [[0, 1, 3], [2, 4], [5]]
    assert SizeBatchSampler([None, (8, 8), None, (8, 8)], 4).batches == [[0], [1, 3], [2]]
    # resize_max maps 128x96 and 64x48 to the same size: one bucket
    (tmp_path / "big").mkdir()
    big = _sized_folder(tmp_path / "big", [(128, 96)])
    assert ImageSource(tmp_path / "big", big, ResizeSpec(64)).target_sizes() == [(64, 48)]
    with pytest.raises(InputError, match="batch_size"):
        SizeBatchSampler(sizes, 0)


def test_probe_applies_exif_orientation(tmp_path):
    img = Image.fromarray(np.zeros((40, 100, 3), np.uint8))  # 100 wide, 40 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: read_image returns 40 wide, 100 high
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert sources.probe_size(tmp_path / "rot.jpg") == (40, 100)
    assert read_image(tmp_path / "rot.jpg").shape[:2] == (100, 40)
    assert sources.probe_size(tmp_path / "absent.jpg") is None


def test_loader_with_workers_yields_every_image_once(photos_and_bad, photo_names):
    root, names = photos_and_bad
    names = names + [photo_names[0]]  # the same photo twice: a batch of two
    source = ImageSource(root, names, ResizeSpec(resize_max=160))
    loader = image_loader(source, batch_size=4, num_workers=2, prefetch_factor=2)
    seen, errors = [], []
    for batch in loader:
        assert batch.leftover == []
        if batch.images is not None:
            assert batch.images.shape[0] == len(batch.records)
            for rec, image in zip(batch.records, batch.images, strict=True):
                ref = resize_image(read_image(root / rec.name), resize_max=160)
                np.testing.assert_array_equal(image.numpy(), ref.image.transpose(2, 0, 1))
                seen.append(rec.index)
        errors += [r.name for r in batch.errors]
    assert sorted(seen) == [0, 1, 2, 5]
    assert sorted(errors) == ["bad.jpg", "missing.png"]
    sizes = [len(b) for b in loader.batch_sampler]
    assert max(sizes) == 2  # the two copies of the same photo


def test_max_batch_one_gives_single_batches(tmp_path):
    names = _sized_folder(tmp_path, [(32, 32)] * 5)
    loader = image_loader(ImageSource(tmp_path, names), batch_size=4, max_batch=1, num_workers=0)
    assert [len(b.records) for b in loader] == [1] * 5
    loader = image_loader(ImageSource(tmp_path, names), batch_size=4, num_workers=0)
    assert [len(b.records) for b in loader] == [4, 1]


def test_collate_keeps_odd_sizes_as_leftover():
    good = [sources.ImageRecord(i, f"{i}.jpg", torch.zeros(3, 8, 8)) for i in range(2)]
    odd = sources.ImageRecord(2, "2.jpg", torch.zeros(3, 8, 9))
    bad = sources.ImageRecord(3, "3.jpg", None, error="3.jpg: broken")
    batch = collate_images([good[0], odd, bad, good[1]])
    assert [r.index for r in batch.records] == [0, 1]
    assert batch.images is not None and tuple(batch.images.shape) == (2, 3, 8, 8)
    assert [r.index for r in batch.leftover] == [2] and [r.index for r in batch.errors] == [3]
    assert collate_images([bad]).images is None
