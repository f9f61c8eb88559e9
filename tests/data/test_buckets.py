"""Resolution buckets: validation, assignment by aspect ratio, exact centre crops, decoded sizes."""

from __future__ import annotations

import math

import edit_fixtures as fx
import numpy as np
import pytest

from fastgrpo.data.buckets import Resolution, ResolutionBuckets, crop_box, parse_resolutions
from fastgrpo.data.images import DecodeConfig, decode_image

BUCKETS = ResolutionBuckets(((512, 512), (768, 512), (512, 768), (1024, 576)))


def test_validation_messages_name_the_fix():
    with pytest.raises(ValueError, match=r"not a positive multiple of 16.*e\.g\. to 512x512"):
        ResolutionBuckets(((510, 512),))
    with pytest.raises(ValueError, match="duplicate"):
        ResolutionBuckets(((512, 512), (512, 512)))
    with pytest.raises(ValueError, match="resolutions is empty"):
        ResolutionBuckets(())
    with pytest.raises(ValueError, match="multiple must be"):
        ResolutionBuckets(((64, 64),), multiple=0)
    assert ResolutionBuckets(((24, 24),), multiple=8)[0] == Resolution(24, 24)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1000, 1000), 0), ((1500, 1000), 1), ((1000, 1500), 2), ((1920, 1080), 3), ((4000, 100), 3), ((90, 100), 0)],
)
def test_assign_picks_the_closest_aspect_ratio(size, expected):
    assert BUCKETS.assign(*size) == expected


def test_ties_go_to_the_first_bucket_and_one_bucket_takes_all():
    square_first = ResolutionBuckets(((64, 32), (32, 64)))
    assert square_first.assign(50, 50) == 0  # 2:1 and 1:2 are equally far from 1:1 in log space
    assert ResolutionBuckets.square(64).assign(5000, 10) == 0
    with pytest.raises(ValueError, match="must be positive"):
        BUCKETS.assign(0, 10)


def test_from_area_rounds_to_the_multiple():
    buckets = ResolutionBuckets.from_area(1024 * 1024, multiple=16)
    assert Resolution(1024, 1024) in buckets.resolutions
    for r in buckets.resolutions:
        assert r.width % 16 == 0 and r.height % 16 == 0
        assert abs(r.width * r.height / 1024**2 - 1) < 0.05
    with pytest.raises(ValueError, match="aspect ratios must be positive"):
        ResolutionBuckets.from_area(512 * 512, aspects=(1.0, 0.0))


def test_crop_box_is_centred_and_has_the_output_aspect():
    assert crop_box((200, 100), (100, 100)) == (50.0, 0.0, 150.0, 100.0)
    assert crop_box((100, 200), (100, 100)) == (0.0, 50.0, 100.0, 150.0)
    left, top, right, bottom = crop_box((1920, 1080), (768, 512))
    assert math.isclose((right - left) / (bottom - top), 768 / 512) and math.isclose(left + right, 1920)


def test_parse_resolutions():
    assert parse_resolutions("512x512, 768x512") == (Resolution(512, 512), Resolution(768, 512))
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_resolutions("512")


@pytest.mark.parametrize("size", [(48, 32), (32, 48), (40, 40), (17, 61)])
def test_decoded_images_have_exactly_their_bucket_size(size):
    buckets = ResolutionBuckets(((32, 32), (48, 32), (32, 48)))
    out = buckets[buckets.assign(*size)]
    pixels, header, _ = decode_image(fx.png(*size), None, DecodeConfig(), out=out)
    assert pixels.shape == (out.height, out.width, 3) and pixels.dtype == np.uint8
    assert header.size == size


def test_the_crop_keeps_the_centre():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a white band in the middle third of a 2:1 image
    pixels, _, box = decode_image(image, None, DecodeConfig(), out=Resolution(40, 40))
    assert box == (20.0, 0.0, 60.0, 40.0)
    assert (pixels[:, 12:28] == 255).all() and (pixels[:, :8] == 0).all() and (pixels[:, -8:] == 0).all()
