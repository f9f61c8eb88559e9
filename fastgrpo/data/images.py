"""Image decoding with safety limits: what a data loader may open, and what it turns pixels into.

Every check runs *before* pixels are decoded, from the file header alone: the file is a regular file under the data
root of at most ``max_file_bytes`` (see :mod:`fastgrpo.data.paths`); its format is on the allowed list (PIL is
asked to try only those plugins, so ones that shell out, such as EPS through Ghostscript, never see the bytes); its
declared pixel count is at most ``max_pixels`` (a PNG of a few hundred bytes can declare 100000x100000 pixels: a
decompression bomb); and its pixel mode is supported. Decoding errors (garbage bytes, truncated files) become
:class:`~fastgrpo.data.records.BadInputError` with a reason code, never a traceback from inside PIL.

Mode policy (images): ``RGB`` as is; ``RGBA``/``LA`` drop alpha (like diffusers' ``load_image``, so training sees
what inference sees); ``L``/``1`` are replicated to three channels; ``P`` goes through its palette (through RGBA
when it has transparency). Everything else (``CMYK``, ``I;16``, ``I``, ``F``, ``YCbCr``, ...) is refused: a
conversion would silently change colours or clip values. EXIF orientation is applied (again like diffusers).

Mask policy: a mask is ``True`` where the image is meant to change. If the mask image has an alpha channel that is
not fully opaque, transparent pixels (alpha < 128) are the region (the DALL-E 2 edit-API convention); otherwise
bright pixels (luminance >= 128, the diffusers inpainting convention) are. A mask of another size than its image is
stretched to the image's size (nearest neighbour) rather than refused.

Note: PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (set by some libraries) makes PIL pad truncated
files silently; fastgrpo never sets it, and detects truncation only while it is ``False`` (PIL's default).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fastgrpo.data.buckets import Resolution, crop_box
from fastgrpo.data.lazy_images import ArrowImage
from fastgrpo.data.paths import open_under_root
from fastgrpo.data.records import BadInputError, ImageRef

__all__ = [
    "SUPPORTED_MODES",
    "DecodeConfig",
    "ImageHeader",
    "decode_image",
    "decode_mask",
    "mask_resized",
    "probe_image",
]

SUPPORTED_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "1"})
_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodeConfig:
    """Limits and choices of image decoding.

    Attributes:
        max_pixels: largest ``width * height`` accepted; larger declared sizes are decompression bombs. Default
            8192² (67 MP). PIL's own hard limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (179 MP), applies on top.
        max_file_bytes: largest encoded file accepted, in bytes (default 64 MiB).
        formats: PIL format names that may be opened (``JPEG`` includes multi-picture ``MPO`` files); files in
            any other format are refused unparsed.
        resample: filter of the resize to the bucket resolution (masks always use nearest neighbour).
        jpeg_draft: let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding (DCT scaling) when the
            bucket is at least that much smaller than the image (2.6x faster for a 4000x3000 JPEG to a 1024x768
            bucket, measured on a 2-core CPU dev machine); pixels differ from a full decode + resize by a few
            levels. Off for bit-exact pipelines.

    Raises:
        ValueError: a non-positive limit, an unknown ``resample`` name or an empty ``formats``.
    """

    max_pixels: int = 8192 * 8192
    max_file_bytes: int = 64 * 2**20
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
    resample: Literal["lanczos", "bicubic", "bilinear"] = "bicubic"
    jpeg_draft: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int (pixels), got {self.max_pixels!r}")
        if not isinstance(self.max_file_bytes, int) or self.max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be a positive int (bytes), got {self.max_file_bytes!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample={self.resample!r} is not one of {sorted(_RESAMPLE)}")
        if not self.formats:
            raise ValueError("formats is empty; allow at least one PIL format name, e.g. ('PNG', 'JPEG')")
        formats = tuple(f.upper() for f in self.formats)
        Image.init()  # registers every plugin (once per process), so that the names can be checked
        unknown = [f for f in formats if f not in Image.OPEN]
        if unknown:
            raise ValueError(f"formats {unknown} are not PIL image formats; choose from {sorted(Image.OPEN)}")
        object.__setattr__(self, "formats", formats)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: ``width``/``height`` in pixels after EXIF orientation, PIL ``mode`` and ``format``
    (``"array"`` for in-memory pixels)."""

    width: int
    height: int
    mode: str
    format: str

    @property
    def size(self) -> Resolution:
        return Resolution(self.width, self.height)


def _label(field: str, ref: ImageRef) -> str:
    if isinstance(ref, str):
        return f"{field} image {ref!r}"
    if isinstance(ref, bytes | bytearray | memoryview):
        return f"{field} image ({len(ref)} bytes)"
    if isinstance(ref, ArrowImage):
        return f"{field} image (Arrow column {ref.column!r})"
    return f"{field} array"


def _decode_error(label: str, error: BaseException) -> BadInputError:
    if isinstance(error, Image.DecompressionBombError):
        return BadInputError("decompression_bomb", f"{label} is a decompression bomb: {error}")
    text = str(error) or type(error).__name__
    if "truncat" in text.lower():
        return BadInputError("truncated_image", f"{label} is truncated ({text}); re-export or remove the file")
    return BadInputError("corrupt_image", f"{label} does not decode as an image ({text})")


def _orientation(img: Image.Image) -> int:
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PIL's PNG getexif() would decode the whole image to look for a trailing eXIf chunk
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block is not worth refusing the image for
        return 1


def _header(img: Image.Image, label: str, config: DecodeConfig) -> ImageHeader:
    width, height = img.size
    if width < 1 or height < 1:
        raise BadInputError("corrupt_image", f"{label} declares an empty size {width}x{height}")
    if width * height > config.max_pixels:
        raise BadInputError(
            "decompression_bomb",
            f"{label} declares {width}x{height} = {width * height} pixels, more than max_pixels="
            f"{config.max_pixels}; downscale it or raise max_pixels",
        )
    if img.mode not in SUPPORTED_MODES:
        raise BadInputError(
            "unsupported_mode",
            f"{label} has pixel mode {img.mode!r}; convert it to 8-bit RGB (supported: {sorted(SUPPORTED_MODES)})",
        )
    if _orientation(img) in (5, 6, 7, 8):  # rotated by 90 degrees: width and height swap
        width, height = height, width
    return ImageHeader(width, height, img.mode, str(img.format))


@contextmanager
def _open(ref: ImageRef, root: str | Path | None, config: DecodeConfig, label: str) -> Iterator[Image.Image]:
    if isinstance(ref, ArrowImage):  # read now, from the memory-mapped file; dropped with the stream
        cell = ref.read()
        if cell is None:
            raise BadInputError("missing_image", f"{label} is empty: its cell holds neither image bytes nor a path")
        ref = cell
    if isinstance(ref, str):
        if root is None:
            raise BadInputError("missing_file", f"{label} is a path but no data root was given; pass root=")
        stream = open_under_root(root, ref, max_bytes=config.max_file_bytes)
    else:
        data = bytes(ref)
        if not data:
            raise BadInputError("empty_file", f"{label} is empty (0 bytes)")
        if len(data) > config.max_file_bytes:
            raise BadInputError(
                "too_large", f"{label} is larger than max_file_bytes={config.max_file_bytes}; raise the limit"
            )
        stream = io.BytesIO(data)
    with stream:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
                # Only the allowed plugins even parse the header: others never see the bytes.
                img = Image.open(stream, formats=config.formats)
        except UnidentifiedImageError:
            raise BadInputError(
                "corrupt_image", f"{label} is not an image in an allowed format ({', '.join(config.formats)})"
            ) from None
        except Exception as error:  # PIL raises many types on hostile headers; all mean "not usable"
            raise _decode_error(label, error) from None
        with img:
            yield img


def _array_image(ref: np.ndarray, label: str, *, mask: bool) -> Image.Image:
    if mask and ref.ndim == 2 and ref.dtype in (np.bool_, np.uint8):
        return Image.fromarray(ref.astype(np.uint8) * 255 if ref.dtype == np.bool_ else ref, mode="L")
    if not mask and ref.dtype == np.uint8 and ref.ndim == 3 and ref.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(ref), mode="RGB")
    expected = "bool or uint8 [H, W]" if mask else "uint8 [H, W, 3]"
    raise BadInputError("bad_array", f"{label} is {ref.dtype} {list(ref.shape)}; expected {expected}")


def probe_image(
    ref: ImageRef, root: str | Path | None, config: DecodeConfig, *, field: str = "source", verify: bool = False
) -> ImageHeader:
    """Read and check an image's header; with ``verify`` also decode it fully (and check PNG CRCs).

    Args:
        ref: path (relative to ``root``), encoded bytes, an Arrow image cell (read now) or an array.
        root: the data root (needed for paths).
        config: the limits.
        field: ``"source"``, ``"reference <k>"``, ``"mask"`` or ``"target"``, for messages.
        verify: decode every pixel; slower, but also finds truncated and corrupt image data.

    Returns:
        The :class:`ImageHeader` (size after EXIF orientation).

    Raises:
        BadInputError: any problem listed in :data:`~fastgrpo.data.records.REASONS` that applies to images.
    """
    label = _label(field, ref)
    if isinstance(ref, np.ndarray):
        img = _array_image(ref, label, mask=field == "mask")
        return ImageHeader(img.width, img.height, img.mode, "array")
    with _open(ref, root, config, label) as img:
        header = _header(img, label, config)
    if not verify:
        return header
    with _open(ref, root, config, label) as img:  # verify() must come first on its handle, and spoils it
        try:
            img.verify()
        except Exception as error:
            raise _decode_error(label, error) from None
    with _open(ref, root, config, label) as img:
        try:
            img.load()
        except Exception as error:
            raise _decode_error(label, error) from None
    return header


def _load(
    img: Image.Image, label: str, header: ImageHeader, box: tuple[float, ...], out: Resolution | None, draft: bool
) -> Image.Image:
    if draft and out is not None and img.format in ("JPEG", "MPO") and _orientation(img) == 1:
        scale = max(out.width / (box[2] - box[0]), out.height / (box[3] - box[1]))
        if scale < 0.5:
            img.draft(img.mode, (math.ceil(header.width * scale), math.ceil(header.height * scale)))
    try:
        img.load()
        if _orientation(img) != 1:
            img = ImageOps.exif_transpose(img)
    except Exception as error:
        raise _decode_error(label, error) from None
    return img


def _scaled_box(img: Image.Image, header: ImageHeader, box: tuple[float, ...]) -> tuple[float, float, float, float]:
    fx, fy = img.width / header.width, img.height / header.height
    return (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(
    ref: ImageRef,
    root: str | Path | None,
    config: DecodeConfig,
    *,
    out: Resolution | None = None,
    field: str = "source",
) -> tuple[np.ndarray, ImageHeader, tuple[float, float, float, float]]:
    """Decode an image to RGB and resize-crop it to ``out``.

    Args:
        ref: path (relative to ``root``), encoded bytes, an Arrow image cell (read now), or ``uint8 [H, W, 3]``
            pixels.
        root: the data root (needed for paths).
        config: limits, resampling filter, JPEG draft mode.
        out: the bucket resolution; ``None`` keeps the image's own size.
        field: ``"source"``, ``"reference <k>"`` or ``"target"``, for messages.

    Returns:
        ``(pixels, header, box)``: ``uint8 [out.height, out.width, 3]`` (C-contiguous, writable), the image's
        header, and the crop box in its own (oriented) pixel coordinates.

    Raises:
        BadInputError: see :func:`probe_image`; also ``truncated_image`` / ``corrupt_image`` from decoding.
    """
    label = _label(field, ref)
    if isinstance(ref, np.ndarray):
        img = _array_image(ref, label, mask=False)
        header = ImageHeader(img.width, img.height, "RGB", "array")
        return _resize(img, header, out, _RESAMPLE[config.resample])
    with _open(ref, root, config, label) as raw:
        header = _header(raw, label, config)
        box = crop_box(header.size, out) if out is not None else (0.0, 0.0, header.width, header.height)
        img = _to_rgb(_load(raw, label, header, box, out, config.jpeg_draft))
        return _resize(img, header, out, _RESAMPLE[config.resample])


def _resize(
    img: Image.Image, header: ImageHeader, out: Resolution | None, resample: int
) -> tuple[np.ndarray, ImageHeader, tuple[float, float, float, float]]:
    if out is None or (header.size == out and img.size == out):
        box = (0.0, 0.0, float(header.width), float(header.height))
        return np.array(img, dtype=np.uint8), header, box
    box = crop_box(header.size, out)
    resized = img.resize(tuple(out), resample, box=_scaled_box(img, header, box))
    return np.array(resized, dtype=np.uint8), header, box


def _mask_levels(img: Image.Image) -> Image.Image:
    """An ``L`` image, 255 where the mask marks the region to change."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        alpha = img.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha.point(lambda a: 255 if a < 128 else 0)
    return img.convert("L").point(lambda v: 255 if v >= 128 else 0)


def decode_mask(
    ref: ImageRef,
    root: str | Path | None,
    config: DecodeConfig,
    *,
    source: ImageHeader,
    out: Resolution | None = None,
) -> np.ndarray:
    """Decode a mask to ``bool [H, W]`` aligned with its source image (see the module's mask policy).

    A mask of another size than its source image is stretched to the source's size first, with nearest-neighbour
    resampling (the fix the MagicBrush maintainers advise for its masks that differ in size from their image,
    MagicBrush repository issue #10); :func:`mask_resized` says whether that happens, so that callers can count it.

    Args:
        ref: path, encoded bytes, an Arrow image cell, or ``bool``/``uint8 [H, W]`` array (non-zero / >= 128 =
            change).
        root: the data root (needed for paths).
        config: limits.
        source: the source image's header.
        out: the bucket resolution the source went to (``None``: the source's own size).

    Returns:
        ``bool [out.height, out.width]``, cropped with the source's crop box, nearest-neighbour resampled.

    Raises:
        BadInputError: any image problem of the mask file (missing, corrupt, a decompression bomb, ...).
    """
    label = _label("mask", ref)
    if isinstance(ref, np.ndarray):
        levels = _array_image(ref if ref.dtype == np.bool_ else ref >= 128, label, mask=True)
        header = ImageHeader(levels.width, levels.height, "L", "array")
    else:
        with _open(ref, root, config, label) as raw:
            header = _header(raw, label, config)
            levels = _mask_levels(_load(raw, label, header, (0, 0, 1, 1), None, draft=False))
    size = out if out is not None else source.size
    box = crop_box(source.size, size)
    if header.size != size or box != (0.0, 0.0, float(source.width), float(source.height)):
        # the crop box is in the source's pixels; scaled to the mask's own, crop and stretch are one pass
        fx, fy = header.width / source.width, header.height / source.height
        levels = levels.resize(
            tuple(size), Image.Resampling.NEAREST, box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        )
    return np.array(levels, dtype=np.uint8) >= 128


def mask_resized(mask: ImageHeader, source: ImageHeader) -> bool:
    """Whether :func:`decode_mask` stretches a mask of header ``mask`` to its source image (their sizes differ)."""
    return mask.size != source.size
