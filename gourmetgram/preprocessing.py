"""Image decoding and preprocessing: the ONE definition training and serving share.

The transformer (serving), the dataset (training and evaluation), the drift detector
and the benchmarks all call :func:`decode_image` and :func:`preprocess`. They need
only Pillow and NumPy, so the transformer image carries no PyTorch.
"""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from gourmetgram.errors import BadInput

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# ((x / 255) - mean) / std as one multiply-add per channel on the uint8 pixels: the same
# normalisation in a third of the time (it runs per served image).
_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32).reshape(3, 1, 1)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32).reshape(3, 1, 1)

# Limits for untrusted images (HTTP); datasets on disk use the same checks.
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # about 6300 x 6300; larger is a decompression bomb


class InvalidImageError(BadInput):
    """Bytes that are not a usable image (bad format, truncated, too large)."""


def decode_image(
    data: bytes,
    target_size: int | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Decode JPEG/PNG bytes into an RGB image, rejecting what cannot be served.

    ``target_size`` lets the JPEG decoder downscale by a power of two while decoding
    (``Image.draft``), never below ``target_size`` on the short side: the same call is
    made in training and serving, so the pixels match.
    """
    if not data:
        raise InvalidImageError("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidImageError(
            f"image is {len(data)} bytes; the limit is {max_bytes} bytes"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImageError(
                    f"image is {width}x{height} pixels; the limit is {max_pixels} pixels"
                )
            if image.format not in ("JPEG", "PNG"):
                raise InvalidImageError(
                    f"image format {image.format} is not supported; send JPEG or PNG"
                )
            if target_size and image.format == "JPEG":
                image.draft("RGB", (target_size, target_size))
            image.load()
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("bytes are not a JPEG or PNG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"image is truncated or corrupt: {exc}") from exc
    return image.convert("RGB")


def preprocess(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB image -> float32 array (3, image_size, image_size), ImageNet-normalised.

    Resize the short side to ``image_size`` (keeping the aspect ratio), centre-crop a
    square, scale to [0, 1] and normalise with the ImageNet mean and std.
    """
    if image.mode != "RGB":  # convert() to the same mode would copy every pixel
        image = image.convert("RGB")
    width, height = image.size
    scale = image_size / min(width, height)
    new_w, new_h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    if (new_w, new_h) == (width, height):
        image = image.crop((left, top, left + image_size, top + image_size))
    else:
        # Resize only the centre square: the crop's region of the source (``box``), straight to
        # the output size. Same pixels as resizing the whole image then cropping (the filter
        # still reads the source beyond the box), without computing the columns cropped away.
        sx, sy = width / new_w, height / new_h
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR,
                             box=(left * sx, top * sy, (left + image_size) * sx, (top + image_size) * sy))
    pixels = np.asarray(image).transpose(2, 0, 1)  # (3, H, W) view of the uint8 pixels
    array = np.empty(pixels.shape, dtype=np.float32)  # C-contiguous, as ONNX Runtime wants it
    np.multiply(pixels, _SCALE, out=array)
    array += _OFFSET
    return array


def preprocess_bytes(data: bytes, image_size: int) -> np.ndarray:
    """Decode and preprocess in one call (what the transformer does per instance)."""
    return preprocess(decode_image(data, target_size=image_size), image_size)


def preprocess_batch(images: Sequence[bytes], image_size: int) -> np.ndarray:
    """Decode and preprocess a batch into one (N, 3, H, W) float32 array."""
    return np.stack([preprocess_bytes(b, image_size) for b in images])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable (serving and evaluation share it)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
