"""Image safety: every bad image and every escaping path is refused with its reason; conversions and masks."""

from __future__ import annotations

import contextlib
import io
import os

import edit_fixtures as fx
import numpy as np
import pytest
from PIL import Image, ImageFile

import fastgrpo.data.paths as paths_module
from fastgrpo.data.buckets import Resolution
from fastgrpo.data.images import DecodeConfig, decode_image, decode_mask, mask_resized, probe_image
from fastgrpo.data.records import BadInputError

CONFIG = DecodeConfig()


def reason_of(ref, root, config=CONFIG, *, verify=True, field="source") -> str:
    with pytest.raises(BadInputError) as info:
        probe_image(ref, root, config, field=field, verify=verify)
    return info.value.reason


@pytest.mark.parametrize("name", sorted(fx.bad_images()))
def test_every_bad_image_file_is_refused_with_its_reason(tmp_path, name):
    data, expected = fx.bad_images()[name]
    fx.write_files(tmp_path, {name: data})
    assert reason_of(name, tmp_path) == expected
    with pytest.raises(BadInputError) as info:  # decoding for training refuses it the same way
        decode_image(name, tmp_path, CONFIG, out=Resolution(16, 16))
    assert info.value.reason == expected and repr(name) in info.value.message


@pytest.mark.parametrize("name", ["zero.png", "bomb.png", "cmyk.jpg", "sixteen.png", "garbage.png"])
def test_header_problems_are_found_without_decoding_pixels(name):
    data, expected = fx.bad_images()[name]
    assert reason_of(data, None, verify=False) == expected


def test_configurable_limits():
    image = fx.png(64, 64)
    with pytest.raises(BadInputError, match="max_pixels=1000") as info:
        probe_image(image, None, DecodeConfig(max_pixels=1000))
    assert info.value.reason == "decompression_bomb"
    assert reason_of(image, None, DecodeConfig(max_file_bytes=100)) == "too_large"
    gif = fx.encode(fx.rgb(8, 8), "GIF")
    with pytest.raises(BadInputError, match=r"allowed format \(PNG\)"):
        probe_image(gif, None, DecodeConfig(formats=("png",)))
    with pytest.raises(ValueError, match="not PIL image formats"):
        DecodeConfig(formats=("PNG", "HEIC2"))
    with pytest.raises(ValueError, match="max_pixels must be"):
        DecodeConfig(max_pixels=0)
    with pytest.raises(ValueError, match="resample="):
        DecodeConfig(resample="cubic")  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path):
    """root/ with a good image, a symlink inside, a symlink out, a folder and a FIFO; a secret outside."""
    root = tmp_path / "root"
    fx.write_files(root, {"ok.png": fx.png(), "sub/inner.png": fx.png()})
    fx.write_files(tmp_path, {"escape.png": fx.png(), "secret/x.png": fx.png()})
    os.symlink(root / "ok.png", root / "link_in.png")
    os.symlink(tmp_path / "escape.png", root / "link_out.png")
    os.symlink(tmp_path / "secret", root / "dir_link")
    (root / "folder.png").mkdir()
    os.mkfifo(root / "pipe.png")
    return root


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("missing.png", "missing_file"),
        ("../escape.png", "outside_root"),
        ("sub/../../escape.png", "outside_root"),
        ("link_out.png", "outside_root"),
        ("dir_link/x.png", "outside_root"),
        ("folder.png", "not_a_file"),
        ("pipe.png", "not_a_file"),  # opened non-blocking: a FIFO cannot hang a worker
        ("https://example.com/a.png", "remote_url"),
        ("", "missing_file"),
    ],
)
def test_paths_that_leave_the_root_or_are_not_files(tree, ref, reason):
    assert reason_of(ref, tree, verify=False) == reason


def test_absolute_paths_are_refused_even_inside_the_root(tree):
    with pytest.raises(BadInputError, match="absolute; write it relative") as info:
        probe_image(str(tree / "ok.png"), tree, CONFIG)
    assert info.value.reason == "outside_root"
    assert reason_of(str(tree.parent / "escape.png"), tree) == "outside_root"


def test_paths_that_stay_inside_are_fine(tree):
    for ref in ("ok.png", "link_in.png", "sub/../ok.png", "./sub/inner.png"):
        assert probe_image(ref, tree, CONFIG, verify=True).size == (24, 16)


def test_nothing_is_opened_outside_the_root(tree, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(paths_module.os, "open", spy)
    for ref in ("ok.png", "../escape.png", "link_out.png", "dir_link/x.png", str(tree.parent / "escape.png")):
        with contextlib.suppress(BadInputError):
            probe_image(ref, tree, CONFIG, verify=True)
    real_root = os.path.realpath(tree)
    assert opened and all(p.startswith(real_root + os.sep) for p in opened)


def test_mode_policy_converts_the_supported_modes_to_rgb():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), 0  # fully transparent: alpha is dropped, colour kept
    pixels, header, _ = decode_image(fx.encode(rgba, "PNG"), None, CONFIG)
    assert header.mode == "RGBA" and pixels.shape == (4, 4, 3) and (pixels == (10, 20, 30)).all()
    grey = np.full((4, 4), 77, np.uint8)
    assert (decode_image(fx.encode(grey, "PNG"), None, CONFIG)[0] == 77).all()
    la = Image.fromarray(np.stack([grey, grey], -1), mode="LA")
    assert (decode_image(fx.encode(la, "PNG"), None, CONFIG)[0] == 77).all()
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    out = decode_image(fx.encode(palette, "PNG", transparency=0), None, CONFIG)[0]
    assert (out == (200, 100, 50)).all()
    bilevel = Image.new("1", (4, 4), 1)
    assert (decode_image(fx.encode(bilevel, "PNG"), None, CONFIG)[0] == 255).all()
    assert decode_image(fx.rgb(5, 3), None, CONFIG)[0].shape == (3, 5, 3)
    with pytest.raises(BadInputError, match=r"expected uint8 \[H, W, 3\]") as info:
        decode_image(np.zeros((3, 5), np.float32), None, CONFIG)
    assert info.value.reason == "bad_array"


def test_mask_policies_and_alignment():
    source = probe_image(fx.png(24, 16), None, CONFIG)
    white_left = decode_mask(fx.mask_png(24, 16), None, CONFIG, source=source)
    assert white_left.dtype == bool and white_left[:, :12].all() and not white_left[:, 12:].any()
    hole = np.full((16, 24, 4), 255, np.uint8)
    hole[4:8, 4:8, 3] = 0  # transparent square = the region to change (DALL-E 2 edit-API convention)
    from_alpha = decode_mask(fx.encode(hole, "PNG"), None, CONFIG, source=source)
    assert from_alpha.sum() == 16 and from_alpha[4:8, 4:8].all()
    array = np.zeros((16, 24), bool)
    array[:, 20:] = True
    small = decode_mask(array, None, CONFIG, source=source, out=Resolution(12, 8))
    assert small.shape == (8, 12) and small[:, 10:].all() and not small[:, :10].any()
    # A mask of another size than its image is stretched to it, nearest neighbour (MagicBrush issue #10).
    half = probe_image(fx.mask_png(12, 8), None, CONFIG)
    assert mask_resized(half, source) and not mask_resized(source, source)
    stretched = decode_mask(fx.mask_png(12, 8), None, CONFIG, source=source)
    assert stretched.shape == (16, 24) and np.array_equal(stretched, white_left)
    cropped = decode_mask(fx.mask_png(12, 8), None, CONFIG, source=source, out=Resolution(16, 16))
    assert np.array_equal(
        cropped, decode_mask(fx.mask_png(24, 16), None, CONFIG, source=source, out=Resolution(16, 16))
    )
    other_aspect = decode_mask(array[::2], None, CONFIG, source=source)  # a 24x8 mask on a 24x16 image
    assert other_aspect.shape == (16, 24) and other_aspect[:, 20:].all() and not other_aspect[:, :20].any()
    with pytest.raises(BadInputError) as info:
        decode_mask(b"not a mask", None, CONFIG, source=source)
    assert info.value.reason == "corrupt_image"


def test_exif_orientation_is_applied_like_diffusers():
    image = Image.fromarray(fx.rgb(30, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = fx.encode(image, "JPEG", exif=exif.tobytes())
    header = probe_image(data, None, CONFIG)
    assert header.size == (20, 30)
    assert decode_image(data, None, CONFIG)[0].shape == (30, 20, 3)


def test_jpeg_draft_is_close_to_a_full_decode_and_optional():
    y, x = np.mgrid[0:512, 0:768]
    smooth = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    data = fx.encode(smooth, "JPEG", quality=95)
    out = Resolution(96, 64)
    exact, _, _ = decode_image(data, None, DecodeConfig(jpeg_draft=False), out=out)
    reference = np.array(Image.open(io.BytesIO(data)).convert("RGB").resize(out, Image.Resampling.BICUBIC))
    assert np.array_equal(exact, reference)
    fast, _, _ = decode_image(data, None, DecodeConfig(jpeg_draft=True), out=out)
    assert fast.shape == exact.shape
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 4


def test_a_header_probe_decodes_no_pixels(monkeypatch):
    files = [fx.png(64, 64), fx.jpeg(64, 64), fx.encode(fx.rgb(8, 8), "WEBP")]
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.format))
    for data in files:
        probe_image(data, None, CONFIG)
    assert loads == []
