"""Reading image and mask files robustly.

Every reader goes through :func:`load_image` and :func:`load_index_png`, so the rules for
odd files live in one place:

- **Colour modes.** Grey-scale (``L``, ``1``, 16-bit ``I;16``, 32-bit ``I``/``F``), palette,
  ``CMYK``, ``YCbCr``, ``LA`` and ``RGBA`` images all come back as 8-bit ``RGB``. Transparent
  pixels are composited onto white, as an image viewer shows them on a page; dropping the
  alpha channel instead would expose whatever colour the encoder left under it.
- **Broken files.** A truncated or undecodable file raises :class:`DataError` naming the
  file; Pillow's global ``LOAD_TRUNCATED_IMAGES`` switch is never touched, so a half-grey
  picture is never silently trained on.
- **EXIF orientation.** ``exif_transpose=True`` turns a photo upright as a viewer shows it.
  Datasets whose masks were drawn on the stored pixels (VOC, COCO) keep it off; see
  ``docs/data.md`` for the policy of each reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "DataError",
    "load_image",
    "load_index_png",
    "to_image_tensor",
    "to_uint8_image",
]


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent; the message names the file.

    A subclass of ``ValueError`` so that the CLI prints it as one line. Readers raise it
    (``on_error="raise"``) or turn it into a warning and a skipped item (``"skip"``).
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Pillow's own I->L conversion clips at 255, which turns a 16-bit photo white.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        if mode == "F" and values.max() <= 1.0:
            top = 1.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: str | os.PathLike, *, exif_transpose: bool = False) -> Image.Image:
    """Read an image file as an 8-bit RGB ``PIL.Image``.

    Args:
        path: image file (any format Pillow reads).
        exif_transpose: apply the EXIF orientation tag (rotate/flip the pixels upright).

    Returns:
        ``PIL.Image.Image`` in mode ``"RGB"``, fully decoded (the file is closed).

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file is not an image, is truncated or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, inside the try
            if exif_transpose:
                image = ImageOps.exif_transpose(image)
            return _to_rgb(image).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # OSError covers "image file is truncated" and "cannot identify image file".
        raise DataError(path, f"cannot read image ({exc})") from exc


def load_index_png(
    path: str | os.PathLike, *, size: tuple[int, int] | None = None, what: str = "mask"
) -> np.ndarray:
    """Read a PNG of integer indices (VOC ``SegmentationObject``/``SegmentationClass``).

    Palette PNGs are read as their palette indices, not as colours.

    Args:
        path: PNG file, mode ``P``, ``L`` or ``I``.
        size: expected ``(H, W)``; a different size raises :class:`DataError`.
        what: what the file is, for error messages.

    Returns:
        ndarray (H, W) of dtype uint8 (``P``/``L``) or int32 (``I`` modes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "L"):
                array = np.array(image, dtype=np.uint8)
            elif image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                array = np.array(image, dtype=np.int32)
            else:
                raise DataError(
                    path, f"{what} must be a palette or single-channel PNG, got mode {image.mode}"
                )
    except (OSError, SyntaxError) as exc:
        raise DataError(path, f"cannot read {what} ({exc})") from exc
    if size is not None and array.shape != tuple(size):
        raise DataError(
            path,
            f"{what} is {array.shape[1]}x{array.shape[0]} (WxH) but the image is "
            f"{size[1]}x{size[0]}",
        )
    return array


def _as_image_tensor(image: torch.Tensor | Image.Image | np.ndarray) -> torch.Tensor:
    """A checked ``(3, H, W)`` uint8 or float tensor, without copying a tensor."""
    if isinstance(image, Image.Image):
        image = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"a numpy image must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"unsupported image type {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"an image must be (3, H, W), got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise ValueError(f"an image must be uint8 or float, got {image.dtype}")
    image = image.detach()
    if torch.isnan(image).any():
        raise ValueError("image contains NaN")
    if image.numel() and (image.min() < -1e-3 or image.max() > 1 + 1e-3):
        raise ValueError(
            f"float image values must be in 0..1, got {float(image.min()):.3g}.."
            f"{float(image.max()):.3g} (pass the image before mean/std normalisation)"
        )
    return image


def to_image_tensor(image: torch.Tensor | Image.Image | np.ndarray) -> torch.Tensor:
    """An RGB image as a float32 tensor ``(3, H, W)`` in ``[0, 1]``: the one image converter.

    Accepts a PIL image (any mode, converted to RGB), a uint8 ``(3, H, W)`` tensor, a
    float ``(3, H, W)`` tensor in ``[0, 1]`` (values outside, e.g. a normalised image, are
    refused), or a uint8 ``(H, W, 3)`` numpy array.
    """
    image = _as_image_tensor(image)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def to_uint8_image(image: torch.Tensor | Image.Image | np.ndarray) -> torch.Tensor:
    """An RGB image as a uint8 tensor ``(3, H, W)``; float values are rounded from 0..1.

    Accepts what :func:`to_image_tensor` accepts; uint8 tensors come back as they are.
    """
    image = _as_image_tensor(image)
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
