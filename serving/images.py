"""The images of requests and responses: base64 PNG / JPEG or raw uint8 arrays in, PNGs out.

Sizes are checked from the header before any pixel is decoded; every refusal is a
:class:`~serving.sessions.RequestError` naming the field. Numpy and PIL only.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image

from serving.schemas import MAX_IMAGE_SIDE, ArrayB64
from serving.sessions import RequestError

__all__ = ["decode_image", "png_b64", "square"]


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, field, "not valid base64") from None


def _check_side(h: int, w: int, field: str) -> None:
    if max(h, w) > MAX_IMAGE_SIDE:
        raise RequestError(413, field, f"image {h}x{w} is larger than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}")


def decode_image(visual: str | ArrayB64, field: str = "visual") -> np.ndarray:
    """A request's image (base64 PNG/JPEG, or a raw uint8 array) -> uint8 (H, W, 3); RequestError naming
    ``field`` otherwise. The size is checked from the header, before any pixel is decoded."""
    if isinstance(visual, ArrayB64):
        h, w, c = visual.shape
        if c != 3:
            raise RequestError(422, f"{field}.shape", f"expected an RGB image (H, W, 3), got {c} channels")
        _check_side(h, w, field)
        raw = _b64(visual.data, f"{field}.data")
        if len(raw) != h * w * c:
            raise RequestError(
                400, f"{field}.data", f"{len(raw)} bytes for shape {visual.shape} ({h * w * c})"
            )
        return np.frombuffer(raw, np.uint8).reshape(h, w, c).copy()
    raw = _b64(visual, field)
    try:
        img = Image.open(io.BytesIO(raw), formats=("PNG", "JPEG"))
    except Image.DecompressionBombError:
        raise RequestError(413, field, f"image is larger than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}") from None
    except Exception:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError) for junk
        raise RequestError(400, field, "not a PNG or JPEG image") from None
    _check_side(img.height, img.width, field)
    if img.mode != "RGB":
        raise RequestError(422, field, f"expected an RGB image, got mode {img.mode}")
    try:
        return np.asarray(img, dtype=np.uint8).copy()
    except Exception:
        raise RequestError(400, field, "truncated or corrupt image") from None


def square(frame: np.ndarray) -> np.ndarray:
    """Centre crop to a square: with the resize that follows, the reference's Resize(short side) +
    CenterCrop (the datasets' frames are square, so the evaluation only resizes)."""
    h, w = frame.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frame[top : top + s, left : left + s]


def png_b64(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
