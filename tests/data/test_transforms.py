import numpy as np
import pytest
from PIL import Image

from restr_fast.data import letterbox_box, letterbox_image, letterbox_mask
from restr_fast.data.transforms import load_image, to_rgb


def test_high_bit_depth_images_are_scaled_by_their_mode_not_their_content():
    gray = np.random.default_rng(0).integers(0, 256, size=(7, 9), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(gray).convert("RGB"))
    for same in (Image.fromarray(gray.astype(np.uint16) * 257),               # I;16
                 Image.fromarray(gray).convert("I"),                          # I, on Pillow's 0..255 scale
                 Image.fromarray(gray).convert("F")):                         # F, on Pillow's 0..255 scale
        assert np.array_equal(np.asarray(to_rgb(same)), expected), same.mode
    flat = np.asarray(to_rgb(Image.fromarray(np.full((3, 4), 32768, np.uint16))))
    assert (flat == 128).all()  # mid-grey, not stretched to white
    bright_pixel = np.full((3, 4), 1000, np.uint16)
    bright_pixel[0, 0] = 65535
    assert (np.asarray(to_rgb(Image.fromarray(bright_pixel)))[1:] == 4).all()  # 1000 / 257, not 1000 / 65535 * 255 of its max
    beyond = np.array([[-0.5, 300.0, np.nan]], np.float32)
    assert np.asarray(to_rgb(Image.fromarray(beyond)))[0, :, 0].tolist() == [0, 255, 0]


def test_16_bit_files_load_on_their_range_whatever_the_format(tmp_path):
    gray = np.random.default_rng(2).integers(0, 256, size=(5, 7), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(gray).convert("RGB"))
    sixteen = gray.astype(np.uint16) * 257
    for name in ("a.png", "a.tif", "a.pgm"):  # Pillow opens these as I;16, I;16 and I
        Image.fromarray(sixteen).save(tmp_path / name)
        assert np.array_equal(np.asarray(load_image(tmp_path / name)), expected), name
    # a PGM whose maxval is 1000: Pillow scales its samples to 0..65535
    (tmp_path / "b.pgm").write_bytes(b"P5\n7 5\n1000\n" + np.round(gray / 255 * 1000).astype(">u2").tobytes())
    assert np.abs(np.asarray(load_image(tmp_path / "b.pgm")).astype(int) - expected).max() <= 1
    Image.fromarray(gray.astype(np.int32)).save(tmp_path / "c.tif")  # 32-bit: on Pillow's 0..255 scale
    assert Image.open(tmp_path / "c.tif").mode == "I"
    assert np.array_equal(np.asarray(load_image(tmp_path / "c.tif")), expected)
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.pgm", upright=True)), expected)


def test_signed_16_bit_tiffs_load_on_pillows_scale_clipped(tmp_path):
    """Pillow opens a TIFF of signed 16-bit samples as mode I, values as they are: on the 0..255 scale of
    32-bit images, negatives black, nothing wrapped around."""
    samples = np.array([[-1000, 0, 100, 255, 1000, 30000]], dtype="<i2")
    strip = samples.tobytes()
    entries = [(256, 3, 1, 6), (257, 3, 1, 1), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 10 + 4), (277, 3, 1, 1), (278, 3, 1, 1), (279, 4, 1, len(strip)),
               (339, 3, 1, 2)]  # width, height, bits, no compression, black is zero, strip, 1 sample, signed
    ifd = len(entries).to_bytes(2, "little") + b"".join(
        tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + count.to_bytes(4, "little")
        + value.to_bytes(4 if kind == 4 else 2, "little") + (b"" if kind == 4 else b"\0\0")
        for tag, kind, count, value in entries) + b"\0\0\0\0"
    (tmp_path / "s.tif").write_bytes(b"II*\0" + (8).to_bytes(4, "little") + ifd + strip)
    assert Image.open(tmp_path / "s.tif").mode == "I"
    assert np.asarray(load_image(tmp_path / "s.tif"))[0, :, 0].tolist() == [0, 0, 100, 255, 255, 255]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_letterbox_image_takes_any_mode(mode):
    rgb = np.random.default_rng(1).integers(0, 256, size=(11, 6, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257) if mode == "I;16" else image.convert(mode)
    pixels, box = letterbox_image(image, 16)
    expected, _ = letterbox_image(to_rgb(image), 16)
    assert pixels.shape == (3, 16, 16) and box == letterbox_box(11, 6, 16)
    assert pixels.equal(expected)


def test_letterbox_mask_takes_any_nonzero_value_as_the_object():
    box = letterbox_box(20, 30, 16)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 4:21] = True
    expected = letterbox_mask(mask, box, 16)
    assert expected.shape == (1, 16, 16) and expected.sum() > 0
    for same in (mask.astype(np.uint8), mask.astype(np.uint8) * 255, mask * np.float32(0.9)):
        assert letterbox_mask(same, box, 16).equal(expected), same.dtype
    with pytest.raises(ValueError, match=r"mask of shape \(30, 20\) does not match .* \(20, 30\)"):
        letterbox_mask(mask.T, box, 16)
