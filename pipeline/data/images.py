"""Encoded images (PNG, JPEG and the other formats Pillow reads) as the uint8 pixel rows a model takes: decoded,
converted to the model's channels (grey ``L`` or colour ``RGB``) and resized to its height and width.

    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (6, 4), (255, 0, 0)).save(buf, format="PNG")
    >>> x = decode_image(buf.getvalue(), (1, 2, 3))
    >>> x.shape, x.dtype, int(x[0, 0, 0])
    ((1, 2, 3), dtype('uint8'), 76)
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np


class ImageError(ValueError):
    """Bytes that are not an image Pillow can decode; the message says why, in one line."""


def decode_image(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """``data`` decoded to uint8 ``[C, H, W]`` for a model of ``shape`` (C = 1: grey, C = 3: RGB); resized with
    an area average (shrinking) or bilinear filtering (growing) when the image has another size."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = (int(v) for v in shape)
    if c not in (1, 3):
        raise ImageError(f"a model of {c} channels takes no encoded images (1: grey, 3: colour)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):  # shrinking: the area average of each output pixel; growing: bilinear
                shrink = im.size[0] >= w and im.size[1] >= h
                im = im.resize((w, h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
            x = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise ImageError(f"not an image Pillow can decode ({why[:120]})") from None
    return x[None] if c == 1 else np.ascontiguousarray(x.transpose(2, 0, 1))
