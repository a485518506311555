"""Image reading on real files of every supported kind, resizing and keypoint rescaling."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from visloc.io.images import ImageError, list_images, read_image, resize_image, scale_keypoints

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A real RGB photo, cropped to a non-square 384x512 (H, W) so rotations change the shape."""
    return np.ascontiguousarray(skimage.data.astronaut()[:384])


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    """A real 8-bit grayscale photo, 512x512."""
    return skimage.data.camera()


def _raises_naming(path: Path, what: str = ""):
    return pytest.raises(ImageError, match=re.escape(path.name) + ".*" + what)


# --- formats ---------------------------------------------------------------------------------


def test_jpeg_rgb(tmp_path, astronaut):
    path = tmp_path / "photo.jpg"
    Image.fromarray(astronaut).save(path, quality=95)
    img = read_image(path)
    assert img.shape == (384, 512, 3)
    assert img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert np.abs(img - astronaut / 255.0).mean() < 0.02  # JPEG loss only


def test_png_8bit_rgb_exact(tmp_path, astronaut):
    path = tmp_path / "photo.png"
    Image.fromarray(astronaut).save(path)
    img = read_image(path)
    assert img.shape == (384, 512, 3)
    np.testing.assert_allclose(img, astronaut / 255.0, atol=1e-6)


def test_png_rgb_written_by_opencv_keeps_rgb_order(tmp_path, astronaut):
    path = tmp_path / "cv.png"
    cv2.imwrite(str(path), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    np.testing.assert_allclose(read_image(path), astronaut / 255.0, atol=1e-6)


def test_grayscale_luminance_formula(tmp_path, astronaut):
    path = tmp_path / "photo.png"
    Image.fromarray(astronaut).save(path)
    gray = read_image(path, grayscale=True)
    assert gray.shape == (384, 512)
    assert gray.dtype == np.float32
    expected = (astronaut / 255.0) @ LUMA
    np.testing.assert_allclose(gray, expected, atol=1e-5)
    # Same weights as OpenCV's RGB -> gray (to within its 8-bit rounding).
    ocv = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY) / 255.0
    assert np.abs(gray - ocv).max() <= 1.0 / 255 + 1e-6


def test_gray_png_as_rgb_and_gray(tmp_path, camera):
    path = tmp_path / "camera.png"
    Image.fromarray(camera).save(path)
    gray = read_image(path, grayscale=True)
    assert gray.shape == (512, 512)
    np.testing.assert_allclose(gray, camera / 255.0, atol=1e-6)
    rgb = read_image(path, grayscale=False)
    assert rgb.shape == (512, 512, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_png_16bit_gray_round_trip(tmp_path, camera):
    data = (camera.astype(np.uint16) * 257) ^ np.uint16(0x5A)  # use the low byte too
    path = tmp_path / "depth16.png"
    cv2.imwrite(str(path), data)
    assert Image.open(path).mode.startswith("I")
    img = read_image(path, grayscale=True)
    assert img.shape == data.shape
    assert np.abs(img.astype(np.float64) - data / 65535.0).max() <= 1.0 / 65535


def test_png_16bit_dark_image_keeps_scale(tmp_path):
    data = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) % 200).astype(np.uint16)
    path = tmp_path / "dark16.png"
    cv2.imwrite(str(path), data)
    img = read_image(path, grayscale=True)
    assert np.abs(img.astype(np.float64) - data / 65535.0).max() <= 1.0 / 65535


def test_pgm_8bit(tmp_path, camera):
    path = tmp_path / "camera.pgm"
    cv2.imwrite(str(path), camera)
    img = read_image(path, grayscale=True)
    np.testing.assert_allclose(img, camera / 255.0, atol=1e-6)


@pytest.mark.parametrize("dark", [False, True])
def test_pgm_16bit(tmp_path, camera, dark):
    data = camera.astype(np.uint16) if dark else camera.astype(np.uint16) * 257 + 3
    path = tmp_path / "camera16.pgm"
    cv2.imwrite(str(path), data)
    assert path.read_bytes().startswith(b"P5")
    img = read_image(path, grayscale=True)
    assert img.shape == (512, 512)
    # A dark 16-bit image must not be mistaken for an 8-bit one (values up to 255 of 65535).
    assert np.abs(img.astype(np.float64) - data / 65535.0).max() <= 1.0 / 65535


def test_tiff_16bit(tmp_path, camera):
    data = camera.astype(np.uint16) * 250 + 17
    path = tmp_path / "camera16.tif"
    cv2.imwrite(str(path), data)
    img = read_image(path)
    assert img.shape == (512, 512, 3)
    assert np.abs(img[..., 0].astype(np.float64) - data / 65535.0).max() <= 1.0 / 65535


def test_rgba_png_drops_alpha(tmp_path, astronaut):
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, astronaut.shape[:2], dtype=np.uint8)
    rgba = np.dstack([astronaut, alpha])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = read_image(path)
    assert img.shape == (384, 512, 3)
    np.testing.assert_allclose(img, astronaut / 255.0, atol=1e-6)  # not premultiplied by alpha
    np.testing.assert_allclose(read_image(path, grayscale=True), (astronaut / 255.0) @ LUMA, atol=1e-5)


def test_gray_alpha_png(tmp_path, camera):
    la = np.dstack([camera, np.full_like(camera, 7)])
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    np.testing.assert_allclose(read_image(path, grayscale=True), camera / 255.0, atol=1e-6)


def test_palette_png(tmp_path, astronaut):
    pal = Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    path = tmp_path / "palette.png"
    pal.save(path)
    assert Image.open(path).mode == "P"
    expected = np.asarray(pal.convert("RGB")) / 255.0
    img = read_image(path)
    assert img.shape == (384, 512, 3)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert np.abs(img - astronaut / 255.0).mean() < 0.05  # still the photo
    assert read_image(path, grayscale=True).shape == (384, 512)


def test_palette_png_with_transparency(tmp_path, astronaut):
    pal = Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    path = tmp_path / "palette_t.png"
    pal.save(path, transparency=0)
    assert "transparency" in Image.open(path).info
    img = read_image(path)
    assert img.shape == (384, 512, 3)
    np.testing.assert_allclose(img, np.asarray(pal.convert("RGB")) / 255.0, atol=1e-6)


def test_exif_orientation_applied(tmp_path, astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(astronaut).save(path, quality=95, exif=exif)
    assert Image.open(path).getexif()[0x0112] == 6
    img = read_image(path)
    assert img.shape == (512, 384, 3)
    clockwise = np.rot90(astronaut, k=-1) / 255.0
    err = np.abs(img - clockwise).mean()
    assert err < 0.02
    assert err < 0.5 * np.abs(img - np.rot90(astronaut, k=1) / 255.0).mean()  # not the other way round


def test_no_exif_not_rotated(tmp_path, astronaut):
    path = tmp_path / "plain.jpg"
    Image.fromarray(astronaut).save(path, quality=95)
    assert read_image(path).shape == (384, 512, 3)


# --- bad files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "missing_photo.jpg"
    with _raises_naming(path, "not found"):
        read_image(path)


def test_directory_is_not_an_image(tmp_path):
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    with _raises_naming(folder):
        read_image(folder)


def test_empty_file(tmp_path):
    path = tmp_path / "empty_photo.jpg"
    path.write_bytes(b"")
    with _raises_naming(path, "empty"):
        read_image(path)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_file(tmp_path, astronaut, suffix, keep):
    full = tmp_path / f"full.{suffix}"
    Image.fromarray(astronaut).save(full)
    data = full.read_bytes()
    path = tmp_path / f"cut_photo.{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    with _raises_naming(path):
        read_image(path)


def test_text_file_with_image_suffix(tmp_path):
    path = tmp_path / "notes_photo.jpg"
    path.write_text("this is not a JPEG at all\n" * 20)
    with _raises_naming(path, "not an image"):
        read_image(path)


def test_too_small(tmp_path, astronaut):
    path = tmp_path / "tiny_photo.png"
    Image.fromarray(astronaut[:4, :4]).save(path)
    with _raises_naming(path, "too small"):
        read_image(path)


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)


# --- resizing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo(astronaut) -> np.ndarray:
    """Float RGB, H=300, W=450."""
    return np.ascontiguousarray(astronaut[:300, :450] / 255.0, dtype=np.float32)


def test_resize_max_edge(photo):
    r = resize_image(photo, resize_max=225)
    assert r.image.shape == (150, 225, 3)
    assert r.scale == (2.0, 2.0)
    assert r.original_size == (450, 300)
    # Area interpolation when shrinking by 2: each pixel is the mean of a 2x2 block.
    blocks = photo.reshape(150, 2, 225, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(r.image, blocks, atol=1e-5)


def test_resize_max_no_upscale(photo):
    r = resize_image(photo, resize_max=1000)
    assert r.image is photo
    assert r.scale == (1.0, 1.0)
    assert r.original_size == (450, 300)
    assert resize_image(photo).image is photo


def test_resize_max_force_upscales(photo):
    r = resize_image(photo, resize_max=900, force=True)
    assert r.image.shape == (600, 900, 3)
    assert r.scale == (0.5, 0.5)
    np.testing.assert_allclose(r.image.mean(), photo.mean(), atol=1e-3)


def test_resize_exact_size(photo):
    r = resize_image(photo, size=(90, 100))
    assert r.image.shape == (100, 90, 3)
    assert r.scale == pytest.approx((5.0, 3.0))
    gray = photo[..., 0]
    rg = resize_image(gray, size=(45, 30))
    assert rg.image.shape == (30, 45)
    assert rg.scale == pytest.approx((10.0, 10.0))


def test_resize_same_size_is_identity(photo):
    r = resize_image(photo, size=(450, 300))
    assert r.image is photo
    assert r.scale == (1.0, 1.0)


def test_scale_keypoints_pixel_centre_convention(photo):
    r = resize_image(photo, resize_max=225)
    h, w = r.image.shape[:2]
    kps = np.array([[-0.5, -0.5], [w - 0.5, h - 0.5], [(w - 1) / 2, (h - 1) / 2], [0.0, 0.0]])
    out = scale_keypoints(kps, r.scale)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [-0.5, -0.5])  # outer edge -> outer edge
    np.testing.assert_allclose(out[1], [450 - 0.5, 300 - 0.5])
    np.testing.assert_allclose(out[2], [(450 - 1) / 2, (300 - 1) / 2])  # centre -> centre
    np.testing.assert_allclose(out[3], [0.5, 0.5])  # first pixel covers original pixels 0 and 1


def test_scale_keypoints_anisotropic():
    out = scale_keypoints(np.array([[1.0, 1.0]], dtype=np.float32), (4.0, 2.0))
    np.testing.assert_allclose(out, [[(1.5 * 4) - 0.5, (1.5 * 2) - 0.5]])


def test_scale_keypoints_matches_resized_content():
    # A bright dot found in the resized image maps back onto the dot in the original.
    img = np.zeros((400, 600), np.float32)
    img[101:103, 301:303] = 1.0  # centre at (x, y) = (301.5, 101.5)
    r = resize_image(img, resize_max=300)
    ys, xs = np.nonzero(r.image > 0.5 * r.image.max())
    found = np.array([[xs.mean(), ys.mean()]])
    np.testing.assert_allclose(scale_keypoints(found, r.scale), [[301.5, 101.5]], atol=1e-4)


# --- listing ------------------------------------------------------------------------------------


def test_list_images_recursive_relative_posix(tmp_path, camera):
    root = tmp_path / "images"
    for rel in ["b.jpg", "a/x.PNG", "a/deep/y.pgm", "c/z.tiff", "c/w.jpeg"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(camera[:16, :16]).save(p, format="PNG")
    (root / "notes.txt").write_text("x")
    (root / "a" / "readme.md").write_text("x")
    (root / "dir.jpg").mkdir()  # a folder named like an image is not an image
    names = list_images(root)
    assert names == ["a/deep/y.pgm", "a/x.PNG", "b.jpg", "c/w.jpeg", "c/z.tiff"]
    assert all("\\" not in n and not n.startswith("/") for n in names)
    assert all((root / n).is_file() for n in names)


def test_list_images_not_a_directory(tmp_path):
    with pytest.raises(ImageError, match="nowhere"):
        list_images(tmp_path / "nowhere")
