"""Training with a teacher: image-level labels plus a trained network's class response maps.

A PRM network trained from labels alone learns only what its own backbone can learn in
the time it has. ``prm train --teacher CKPT`` adds a second loss: the student's class
response maps are pulled, cell by cell, towards the teacher's, as soft targets

    loss = MultiLabelSoftMargin(scores, labels)
           + teacher_weight * mean over (b, c, y, x) of BCE(student_crm, sigmoid(teacher_crm))

(binary cross-entropy with logits; the teacher's maps are resized bilinearly to the
student's when their strides differ). The teacher is any PRM checkpoint of the same
classes, trained from the same image-level labels, so no mask or box enters training.
On GlyphScenes the small backbone learns nothing from labels alone but learns the
glyphs from EfficientNet-Lite0's maps, and its PRMs retrieve better than the teacher's
(README, "Distilled recipe").

The teacher is frozen and in eval mode; it sees the same augmented batch as the student.
When that batch is the same in every epoch (no flip, no jitter: GlyphScenes by default),
each image's maps are kept after its first pass (``cache_bytes``), which spares the
teacher's forward pass in every later epoch and changes no number.
Every checkpoint of the student records the teacher's path and SHA-256, and a resumed
run refuses a teacher file that changed since.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prm.engine.checkpoint import check_compatible, load_checkpoint, model_from_state
from prm.engine.kept import KeptOutputs

__all__ = ["Teacher", "teacher_loss", "file_sha256"]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_loss(student_crm: torch.Tensor, teacher_crm: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the student's maps against the teacher's, as soft targets.

    Args:
        student_crm (Tensor[B, C, h, w]): the student's class response maps (logits).
        teacher_crm (Tensor[B, C, h', w']): the teacher's (logits); resized bilinearly to
            ``(h, w)`` when the sizes differ.

    Returns:
        Tensor[]: ``mean(BCE-with-logits(student, sigmoid(teacher)))`` over every cell.
    """
    if student_crm.shape[:2] != teacher_crm.shape[:2]:
        raise ValueError(
            f"teacher maps {tuple(teacher_crm.shape)} do not match the student's "
            f"{tuple(student_crm.shape)} in batch or classes"
        )
    teacher_crm = teacher_crm.float()
    if teacher_crm.shape[2:] != student_crm.shape[2:]:
        teacher_crm = F.interpolate(
            teacher_crm, size=student_crm.shape[2:], mode="bilinear", align_corners=False
        )
    target = torch.sigmoid(teacher_crm)
    return F.binary_cross_entropy_with_logits(student_crm.float(), target)


class Teacher:
    """A frozen PRM network whose class response maps a student is trained towards.

    Args:
        path: the teacher's checkpoint (``prm train``'s ``last.pt`` / ``best.pt``).
        class_names: the student's classes; the teacher must have the same, in order.
        mean, std: the student's input normalisation; the teacher must share it, as it
            sees the student's batches.
        device: where the teacher runs.
        out: the student's run folder; a teacher inside it would be overwritten.

    Raises:
        ValueError: the file is not a PRM network's checkpoint, or its classes or input
            normalisation differ from the student's, or it lies in the student's folder.
    """

    def __init__(
        self,
        path: str | Path,
        class_names: list[str],
        *,
        mean: list[float],
        std: list[float],
        device: torch.device | str = "cpu",
        out: str | Path | None = None,
        cache_bytes: int = 0,
    ):
        self.path = Path(path)
        if out is not None and self.path.resolve().parent == Path(out).resolve():
            raise ValueError(
                f"teacher {self.path} is in the student's run folder {out}, where the "
                "student's checkpoints would overwrite it; copy it elsewhere"
            )
        state = load_checkpoint(self.path, map_location=device)
        if "model_config" not in state:  # e.g. a Mask R-CNN of `prm distill`
            raise ValueError(
                f"teacher {self.path} is not a PRM network checkpoint (no model_config): "
                "give the last.pt or best.pt of a `prm train` run"
            )
        try:
            check_compatible(state, self.path, class_names=class_names)
        except ValueError as exc:
            raise ValueError(f"teacher: {exc}") from None
        self.model = model_from_state(state, self.path).to(device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        if self.model.mean != list(mean) or self.model.std != list(std):
            raise ValueError(
                f"teacher {self.path} normalises its input with mean {self.model.mean}, std "
                f"{self.model.std}; the student with {list(mean)}, {list(std)}"
            )
        self._kept = KeptOutputs(self.model.class_response_maps, cache_bytes)
        self.sha256 = file_sha256(self.path)
        self.backbone = state["model_config"].get("backbone")
        self.epoch = state.get("epoch")

    def maps(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """The teacher's class response maps ``(B, C, h, w)`` of normalised images
        ``(B, 3, H, W)`` (no gradient).

        ``keys`` name the images (their ``image_id``): with ``cache_bytes > 0`` the maps
        of each input (found by its name and a digest of its bytes, so an image and its
        mirror are two inputs) are kept, up to that many bytes, and only inputs not seen
        before go through the teacher (:class:`prm.engine.kept.KeptOutputs`).
        """
        return self._kept(images, keys)

    def record(self) -> dict[str, Any]:
        """What the student's checkpoints keep of the teacher."""
        return {
            "path": str(self.path.resolve()),
            "sha256": self.sha256,
            "backbone": self.backbone,
            "epoch": self.epoch,
        }

    def check_same(self, recorded: dict[str, Any] | None, checkpoint: str | Path) -> None:
        """Refuse to resume ``checkpoint`` with another teacher than it was trained with."""
        if recorded is None:
            raise ValueError(
                f"{checkpoint} was trained without a teacher; resume it without --teacher "
                "or start a new run"
            )
        if recorded.get("sha256") != self.sha256:
            raise ValueError(
                f"{checkpoint} was trained with teacher {recorded.get('path')} "
                f"(sha256 {str(recorded.get('sha256'))[:12]}...), but {self.path} now has "
                f"sha256 {self.sha256[:12]}...: resume with the same teacher file"
            )
