"""Image transforms for training and inference (torchvision ``transforms.v2``).

Both act on the image only: image-level labels do not change under a flip or a resize,
and instance ground truth stays at the original resolution (``target["size"]``), which is
where predictions are mapped back for evaluation. Do not use ground-truth masks together
with :class:`TrainTransform`: they are not flipped with the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .images import to_image_tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TrainTransform", "InferenceTransform", "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _square(size: int | Sequence[int] | None) -> list[int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = [int(s) for s in size]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be an int or (H, W) of positive ints, got {size}")
    return size


class TrainTransform:
    """Training transform of the authors' recipe: resize, random flip, normalise.

    Optional augmentation for training from scratch (off by default; both keep every
    object at least partly in view, so that the image-level labels stay true):

    - ``scale_jitter = s``: a random zoom in ``[1 - s, 1 + s]`` and a shift of up to
      ``s / 2`` of the size each way (``RandomAffine``; borders filled with the mean);
    - ``colour_jitter = j``: brightness and contrast changed by up to ``j`` (no hue or
      saturation change: where a dataset's classes differ in colour, that stays a cue).

    Args:
        size: output ``(H, W)``, or an int for a square; the aspect ratio is not kept
            (448 for VOC, as the authors).
        flip: random horizontal flip with probability 0.5.
        scale_jitter: see above (0: none).
        colour_jitter: see above (0: none).
        mean, std: per-channel normalisation (ImageNet's by default).

    Call:
        image (PIL.Image RGB or Tensor[3, H, W] uint8) -> Tensor[3, size, size] float32.
    """

    def __init__(
        self,
        size: int | Sequence[int] = 448,
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        scale_jitter: float = 0.0,
        colour_jitter: float = 0.0,
    ):
        if not 0 <= scale_jitter < 1 or not 0 <= colour_jitter < 1:
            raise ValueError(
                f"scale_jitter and colour_jitter must be in [0, 1), got {scale_jitter}, "
                f"{colour_jitter}"
            )
        steps = [v2.ToImage(), v2.Resize(_square(size), antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        if scale_jitter > 0:
            fill = [round(255 * m) for m in mean]
            shift, zoom = (scale_jitter / 2, scale_jitter / 2), (1 - scale_jitter, 1 + scale_jitter)
            steps.append(v2.RandomAffine(degrees=0, translate=shift, scale=zoom, fill=fill))
        if colour_jitter > 0:
            steps.append(v2.ColorJitter(brightness=colour_jitter, contrast=colour_jitter))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.pipeline = v2.Compose(steps)

    def __call__(self, image) -> torch.Tensor:
        # A plain tensor, not a tv_tensors.Image, so that batches behave like any tensor.
        return self.pipeline(image).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


class InferenceTransform:
    """Inference transform: resize to the network's input size and normalise.

    The one preprocessing path: training validation, :class:`prm.predictor.Predictor`
    and the command line all use it. The image is converted with
    :func:`prm.data.images.to_image_tensor`, resized as floats (bilinear, antialiased;
    the aspect ratio is not kept) and normalised. The original size stays in
    ``target["size"]`` so that masks found at network resolution can be mapped back.

    Args:
        size: network input ``(H, W)`` or an int for a square (the authors' 448);
            ``None`` keeps the image's own size (the network is fully convolutional).
        mean, std: per-channel normalisation (ImageNet's by default).

    Call:
        image (PIL.Image, Tensor[3, H, W] uint8 or float in 0..1, or ndarray[H, W, 3]
        uint8) -> Tensor[3, H', W'] float32.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = 448,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        size = _square(size)
        self.size = tuple(size) if size is not None else None
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        image = to_image_tensor(image)
        if self.size is not None and tuple(image.shape[1:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True)[0]
        return (image - self.mean.to(image.device)) / self.std.to(image.device)

    def __repr__(self) -> str:
        return f"InferenceTransform(size={self.size}, mean={self.mean.flatten().tolist()}, " + (
            f"std={self.std.flatten().tolist()})"
        )


def denormalize(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Undo the normalisation, for display.

    Args:
        images (Tensor[..., 3, H, W]): normalised images.

    Returns:
        Tensor[..., 3, H, W] (float32) in 0..1.
    """
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images * std_t + mean_t).clamp(0, 1)
