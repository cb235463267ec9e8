"""images.to_rgb8 on every PIL mode and array kind it takes, and the three entry points that use it."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from smartvlm_jax import images
from smartvlm_jax.data import smart101
from smartvlm_jax.towers import preprocess

H, W = 24, 40
RAMP16 = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))  # a 0..65535 ramp across the image
RAMP8 = np.rint(RAMP16 / 257).astype(np.uint8)


def _rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _assert_grey_ramp(out: Image.Image) -> None:
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr.shape == (H, W, 3)
    np.testing.assert_allclose(arr[..., 0].astype(int), RAMP8.astype(int), atol=1)
    assert len(np.unique(arr)) >= W - 1  # every grey level of the ramp survives (was 2-5 before)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I"])
def test_sixteen_bit_modes_are_scaled_not_clipped(mode):
    image = Image.fromarray(RAMP16) if mode != "I" else Image.fromarray(RAMP16.astype(np.int32))
    if mode not in ("I;16", "I"):
        image = Image.frombytes(mode, (W, H), RAMP16.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert image.mode == mode
    _assert_grey_ramp(images.to_rgb8(image))


def test_float_mode_and_arrays():
    unit = RAMP16.astype(np.float32) / 65535
    _assert_grey_ramp(images.to_rgb8(Image.fromarray(unit, mode="F")))
    for dtype in (np.float16, np.float32, np.float64):
        _assert_grey_ramp(images.to_rgb8(unit.astype(dtype)))
    _assert_grey_ramp(images.to_rgb8(unit * 1000 - 7))  # outside [0, 1]: its own min..max
    with pytest.raises(ValueError, match="not all finite"):
        images.to_rgb8(np.full((H, W), np.nan, np.float32))


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "CMYK", "YCbCr", "LA", "RGBA"])
def test_eight_bit_modes_convert_as_pil(mode):
    """The reference's convert("RGB") for the 8-bit modes (alpha dropped), whatever the policy says
    where there is no alpha."""
    image = Image.fromarray(_rgb()).convert(mode)
    expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(images.to_rgb8(image, alpha="drop")), expected)
    if "A" not in image.getbands():
        np.testing.assert_array_equal(np.asarray(images.to_rgb8(image, alpha="white")), expected)


def test_transparency_policies():
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent on the left half
    rgba[:, W // 2 :, 3] = 255
    white = np.asarray(images.to_rgb8(rgba, alpha="white"))
    assert (white[:, : W // 2] == 255).all() and (white[:, W // 2 :] == [200, 0, 0]).all()
    dropped = np.asarray(images.to_rgb8(rgba, alpha="drop"))
    assert (dropped == [200, 0, 0]).all()
    # P with a transparent palette index (GIF/PNG style) and LA
    p = Image.fromarray(rgba[..., :3]).convert("P")
    p.info["transparency"] = int(np.asarray(p)[0, 0])
    assert (np.asarray(images.to_rgb8(p, alpha="white"))[0, 0] == 255).all()
    la = Image.fromarray(np.stack([np.full((H, W), 10, np.uint8), rgba[..., 3]], -1), mode="LA")
    assert (np.asarray(images.to_rgb8(la, alpha="white"))[:, 0] == 255).all()
    assert (np.asarray(images.to_rgb8(la, alpha="drop")) == 10).all()
    with pytest.raises(ValueError, match="alpha must be"):
        images.to_rgb8(rgba, alpha="black")


@pytest.mark.parametrize("shape", [(H, W), (H, W, 1), (H, W, 3), (H, W, 4)])
def test_array_shapes(shape):
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = np.asarray(images.to_rgb8(arr))
    grey = arr.reshape(H, W, -1)[..., :3]
    np.testing.assert_array_equal(out, np.broadcast_to(grey, (H, W, 3)))
    np.testing.assert_array_equal(np.asarray(images.to_rgb8(arr.astype(np.uint16) * 257)), out)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((H, W), bool),
        np.zeros((H, W), np.int64),
        np.zeros((H, W, 2), np.uint8),
        np.zeros((H, W, 5), np.uint8),
        np.zeros((2, H, W, 3), np.uint8),
        np.zeros((0, W), np.uint8),
    ],
)
def test_other_arrays_are_refused_naming_shape_and_dtype(array):
    with pytest.raises(ValueError, match=rf"shape \({array.shape[0]}, .*dtype {array.dtype}"):
        images.to_rgb8(array)


def test_entry_points_share_the_rule(tmp_path):
    """The data pipeline's loader, the towers' resizers and the predictor's path (resize_shorter_side)
    keep the grey levels of a 16-bit PNG, and take (H, W, 1) uint8 and uint16 arrays."""
    path = tmp_path / "ramp16.png"
    Image.fromarray(RAMP16).save(path)
    loaded = np.asarray(smart101.load_image(path))
    assert (loaded == 255).mean() < 0.1 and len(np.unique(loaded)) > 100  # was 97-99 % white
    resizer = preprocess.Resizer(size=32, resize=32, shortest_edge=False)
    for image in (Image.open(path), RAMP16, RAMP8[..., None]):
        assert len(np.unique(resizer(image))) > 16
        assert len(np.unique(np.asarray(smart101.resize_shorter_side(image, 32)))) > 16
    with pytest.raises(ValueError, match=r"shape \(24, 40, 2\) and dtype uint8"):
        resizer(np.zeros((H, W, 2), np.uint8))


# ----------------------------------------------------------------------- EXIF orientation (issue 28, item 9)


def _sideways_jpeg(tmp_path, orientation: int = 6):
    """A JPEG whose stored pixels are a left-dark / right-light 32 x 64 picture, tagged to be shown turned
    90 degrees clockwise (Orientation 6, a phone held upright); returns (path, the upright picture)."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, 32:] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "portrait.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    return path, np.rot90(stored, k=-1)  # clockwise: [64, 32], dark on top


def _assert_upright(out, upright):
    arr = np.asarray(out.convert("RGB") if isinstance(out, Image.Image) else out, np.int32)
    assert arr.shape[:2] == upright.shape[:2], arr.shape
    assert np.abs(arr - upright).mean() < 8  # JPEG noise only; a sideways image differs by ~128


def test_exif_orientation_is_applied_on_every_decode_path(tmp_path):
    path, upright = _sideways_jpeg(tmp_path)
    _assert_upright(images.open_image(path), upright)  # files: the reader, the build, the predictor
    _assert_upright(images.open_image(path.read_bytes()), upright)  # bytes: the grain pipeline, --image bytes
    with Image.open(path) as im:  # a PIL image the caller decoded (Predictor, towers' preprocess)
        _assert_upright(images.to_rgb8(im), upright)
        _assert_upright(preprocess.to_rgb(im), upright)
    loaded = smart101.load_image(path)  # shorter side 224: [448, 224], still dark on top
    assert loaded.size == (224, 448)
    arr = np.asarray(loaded, np.int32)
    assert arr[:200].mean() < 10 and arr[-200:].mean() > 245
    # applied once: what open_image returns carries no orientation left to apply again
    _assert_upright(images.to_rgb8(images.open_image(path)), upright)


def test_images_without_orientation_are_unchanged_bit_for_bit(tmp_path):
    from smartvlm_jax.data import synthetic

    root = tmp_path / "smart"
    synthetic.write_dataset(str(root), per_puzzle=2, seed=0, puzzle_ids=[1, 16])
    pngs = sorted(root.rglob("*.png"))
    assert pngs
    exif = Image.Exif()
    exif[0x0112] = 1  # "upright" said explicitly
    tagged = tmp_path / "tagged.png"
    with Image.open(pngs[0]) as im:
        im.save(tagged, exif=exif)
    for path in [*pngs, tagged]:
        with Image.open(path) as im:
            im.load()
            raw, mode = np.asarray(im).copy(), im.mode
        out = images.open_image(path)
        assert out.mode == mode and out.size == (raw.shape[1], raw.shape[0])
        np.testing.assert_array_equal(np.asarray(out), raw)
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(images.to_rgb8(im)), np.asarray(im.convert("RGB")))


# -------------------------------------------------------------------- decompression bombs (issue 28, item 8)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 15000 x 12000 1-bit PNG (180,000,000 pixels, past Pillow's own hard stop of 178,956,970): a few
    kilobytes on disk."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (15000, 12000)).save(path)
    return path


def test_decompression_bombs_are_bad_images_named_with_their_pixel_count(bomb, tmp_path, monkeypatch):
    assert not issubclass(Image.DecompressionBombError, OSError)  # why open_image translates it
    with pytest.raises(
        images.ImageTooLargeError,
        match=r"180,000,000 pixels, over the limit of 89,478,485 "
        r"\(\$SMARTVLM_JAX_MAX_IMAGE_PIXELS",
    ):
        images.open_image(bomb)
    # Our own limit, checked on the header before decoding: 600 pixels allow 20 x 30, refuse 30 x 30.
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "600")
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.new("RGB", (20, 30)).save(small)
    Image.new("RGB", (30, 30)).save(big)
    assert images.open_image(small).size == (20, 30)
    with pytest.raises(OSError, match=r"^the image has 900 pixels \(30 x 30\), over the limit of 600 "):
        images.open_image(big.read_bytes())
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "0")  # no limit of ours
    assert images.open_image(big).size == (30, 30)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=r"\$SMARTVLM_JAX_MAX_IMAGE_PIXELS='lots' is not an integer"):
        images.open_image(small)


def test_a_bomb_in_the_data_is_a_bad_row(bomb, tmp_path):
    from smartvlm_jax.data import synthetic

    root = tmp_path / "smart"
    synthetic.write_dataset(str(root), per_puzzle=3, seed=0, puzzle_ids=[7])
    rows = smart101.read_rows(str(root), [7])
    bad = rows[1]
    pathlib.Path(bad.image_path).write_bytes(bomb.read_bytes())
    where = rf"{re.escape(smart101.csv_line(bad))} .*{bad.image_path}: the image has 180,000,000 pixels"
    with pytest.raises(smart101.BadImageError, match=where):
        smart101.drop_bad_images(rows, skip_bad_rows=False)
    good, skipped = smart101.drop_bad_images(rows, skip_bad_rows=True)
    assert [r.row_index for r in good] == [rows[0].row_index, rows[2].row_index] and len(skipped) == 1
