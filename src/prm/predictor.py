"""One-call inference: images (+ proposals) -> scored instance masks at full resolution.

    predictor = Predictor.from_checkpoint("runs/voc/last.pt")
    instances = predictor(images)                # one dict per image

(proposals are computed by the built-in selective search unless given:
``predictor(images, proposals)`` with one ``(P, H, W)`` bool tensor per image).

Each image is resized to the network's input size and normalised, its peak response maps
are computed (:func:`prm.backprop.peak_response_maps`), and one proposal per peak is
retrieved (:func:`prm.retrieval.retrieve_instances`) at the network resolution, as the
authors do. Masks, boxes, peaks and PRMs come back at the image's own resolution.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from prm.backprop import PeakSelection, class_response_peak_maps, peak_response_maps
from prm.data.images import to_image_tensor, to_uint8_image
from prm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, InferenceTransform
from prm.masks import masks_to_boxes, resize_nearest
from prm.proposals.compact import CompactProposals
from prm.retrieval import RetrievalConfig, RetrievalTerms, retrieve_instances
from prm.validation import check_number

# Longest side an image is worked on at by default (Predictor(max_size=...), --max-size).
MAX_SIZE = 2048

__all__ = ["Predictor", "crm_to_image_coords"]

ScoreType = Literal["peak", "retrieval", "class"]
ProposalFn = Callable[[torch.Tensor], torch.Tensor]
Response = Literal["prm", "crm"]


def crm_to_image_coords(
    yx: torch.Tensor,
    crm_size: tuple[int, int],
    sub_pixel_factor: int,
    image_size: tuple[int, int],
) -> torch.Tensor:
    """Map CRM cells to image pixel coordinates.

    A cell ``i`` of the base CRM (before sub-pixel upsampling, ``h`` cells) covers the image
    rows ``[i, i + 1) * H / h``, so its centre is ``(i + 0.5) * H / h``. Sub-pixel cells are
    first mapped back to base-cell coordinates through the ``align_corners=True`` grid.

    Args:
        yx (Tensor[K, 2]): ``(y, x)`` CRM cells (after sub-pixel upsampling).
        crm_size: ``(hc, wc)`` size of the (upsampled) CRM.
        sub_pixel_factor: ``f``; the base CRM is ``(hc / f, wc / f)``.
        image_size: ``(H, W)``.

    Returns:
        Tensor[K, 2] (float32): ``(x, y)`` in image pixels.
    """
    out = torch.zeros((yx.shape[0], 2), dtype=torch.float32)
    for axis, (size_c, size_img) in enumerate(zip(crm_size, image_size)):
        base = size_c // sub_pixel_factor
        pos = yx[:, axis].float().cpu()
        if size_c > 1 and sub_pixel_factor > 1:
            pos = pos * (base - 1) / (size_c - 1)
        out[:, 1 - axis] = (pos + 0.5) * size_img / base
    return out


class Predictor:
    """Weakly supervised instance segmentation with a trained :class:`PeakResponseNet`.

    ``Predictor.from_checkpoint(path)`` (or ``Predictor(load_model(path))``) is ready to
    use: the model carries its input size, normalisation, class names, kind (peak
    stimulation or the CAM baseline) and any stored peak and retrieval settings, which
    are the defaults of every argument below.

    Args:
        model: the trained network (put in eval mode; not otherwise modified).
        input_size: network input size, an int (square) or ``(h, w)``; ``None`` feeds each
            image at its own size. Default: the model's ``input_size`` (its training
            size), or the authors' 448 for a model that does not say.
        mean, std: normalisation (default: the model's, else ImageNet's).
        peak_selection: which peaks become instances (:class:`prm.backprop.PeakSelection`).
            Default: the model's stored one, else ``class_threshold=0`` and an absolute
            ``peak_threshold=0``, i.e. peaks with a positive logit, where the network says
            the class is more likely present than not (the authors' demo used 30 for
            their VOC model, whose logits are larger).
        retrieval: :class:`~prm.retrieval.RetrievalConfig` (default: the model's stored
            one, e.g. from ``prm tune``, else the authors' values).
        proposal_fn: what to do for an image given without proposals: a callable taking
            the ``(3, H, W)`` uint8 image and returning ``(P, H, W)`` bool proposals (e.g.
            :class:`prm.proposals.SelectiveSearch`) or compact proposals
            (:class:`~prm.proposals.CompactProposals`, e.g. from
            ``SelectiveSearch().propose``: only the chosen ones are ever made dense), or
            ``"prm"`` for the proposal-free fallback (candidates from the thresholded PRMs
            themselves, :func:`prm.proposals.prm_support_proposals`), or ``"grabcut"``
            for GrabCut seeded by each PRM, plus those
            (:func:`prm.proposals.grabcut_proposals`: masks that follow image edges).
            Default: the built-in selective search (:class:`prm.proposals.SelectiveSearch`,
            ``fast``).
        response: ``"prm"`` (peak response maps, the method) or ``"crm"`` (each peak's
            class response map instead: the paper's CAM baseline, no back-propagation).
            Default: ``"prm"`` for a model trained with peak stimulation, ``"crm"`` for
            one trained with global average pooling (the CAM baseline network).
        score: the instance score reported in ``"scores"`` and used to rank instances
            across images (for mAP): ``"peak"`` (the CRM value at the instance's peak:
            the network's confidence that an object of that class is there; default),
            ``"retrieval"`` (the proposal score, the authors' ranking within one image,
            which measures how much of the PRM the mask explains rather than how sure the
            network is) or ``"class"`` (the image-level class score). All three are also
            returned under their own keys.
        chunk_size: peaks back-propagated at once (see :func:`peak_response_maps`).
        smooth_strided: back-propagate the peaks with the smoothed rule for strided
            convolutions (:func:`prm.backprop.peak_backprop_rule`; not the paper's rule,
            which is ``False``). Default: the model's stored setting (``prm tune`` can
            choose it on validation images), else the model's ``smooth_strided``
            attribute, else ``False``.
        keep_prms: return the per-instance PRMs (``(N, H, W)`` floats per image) and
            the class response maps (``"crm"``, ``(C, h, w)`` at the network's output
            resolution).
        max_size: the longest side an image is worked on at (default 2048). A larger
            image is scaled down to it (with a warning), predicted, and its masks,
            boxes and peaks are scaled back to the image's size (nearest neighbour);
            its ``prms`` stay at the working size. This bounds the time and memory of
            one image (proposals and maps are ``(P, H, W)``). ``None``: no bound.
        device: where to run (the model's device by default).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: int | tuple[int, int] | None | Literal["model"] = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        peak_selection: PeakSelection | None = None,
        retrieval: RetrievalConfig | None = None,
        proposal_fn: ProposalFn | Literal["prm"] | None = None,
        response: Response | None = None,
        score: ScoreType = "peak",
        chunk_size: int | None = None,
        smooth_strided: bool | None = None,
        keep_prms: bool = True,
        device: torch.device | str | None = None,
        max_size: int | None = MAX_SIZE,
    ):
        if score not in ("peak", "retrieval", "class"):
            raise ValueError(f"score must be 'peak', 'retrieval' or 'class', got {score!r}")
        if response is None:
            response = "prm" if getattr(model, "peak_stimulation", True) else "crm"
        if response not in ("prm", "crm"):
            raise ValueError(f"response must be 'prm' or 'crm', got {response!r}")
        if isinstance(proposal_fn, str) and proposal_fn not in ("prm", "grabcut"):
            raise ValueError(
                f"proposal_fn must be a callable, 'prm' or 'grabcut', got {proposal_fn!r}"
            )
        if input_size == "model":
            input_size = getattr(model, "input_size", None) or 448
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        if input_size is not None:
            for side in input_size:
                check_number("input_size", side, minimum=1, integer=True)
        if chunk_size is not None:
            check_number("chunk_size", chunk_size, minimum=1, integer=True)
        if max_size is not None:
            check_number("max_size", max_size, minimum=32, integer=True)
        self.max_size = max_size
        if proposal_fn is None:
            from prm.proposals import SelectiveSearch

            proposal_fn = SelectiveSearch()
        stored = getattr(model, "inference", {})
        self.model = model.eval()
        self.transform = InferenceTransform(
            input_size,
            mean if mean is not None else getattr(model, "mean", IMAGENET_MEAN),
            std if std is not None else getattr(model, "std", IMAGENET_STD),
        )
        if peak_selection is None:
            peak_selection = PeakSelection(**stored.get("peak_selection", {"peak_threshold": 0.0}))
        self.peak_selection = peak_selection
        if retrieval is None:
            retrieval = RetrievalConfig.from_dict(stored.get("retrieval", {}), source="the model")
        self.retrieval = retrieval
        self.retrieval.validate(getattr(model, "num_classes", None))
        self.proposal_fn = proposal_fn
        self.response = response
        self.score = score
        self.chunk_size = chunk_size
        if smooth_strided is None:
            smooth_strided = stored.get("smooth_strided", getattr(model, "smooth_strided", False))
        if not isinstance(smooth_strided, bool):
            raise ValueError(f"smooth_strided must be True or False, got {smooth_strided!r}")
        self.smooth_strided = smooth_strided
        self.keep_prms = keep_prms
        param = next(model.parameters(), torch.empty(0))  # a model without any: CPU
        self.device = torch.device(device) if device is not None else param.device

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        sub_pixel_factor: int | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A predictor for a checkpoint of ``prm train`` (or ``prm tune --save-checkpoint``).

        Args:
            path: the checkpoint.
            device: where to run (CPU by default).
            sub_pixel_factor: change the model's (it has no weights).
            **kwargs: any other argument of :class:`Predictor`, over the checkpoint's.
        """
        from prm.engine.checkpoint import load_model

        overrides = {} if sub_pixel_factor is None else {"sub_pixel_factor": sub_pixel_factor}
        device = torch.device(device) if device is not None else torch.device("cpu")
        model = load_model(path, map_location=device, **overrides).to(device)
        return cls(model, device=device, **kwargs)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The network input ``(h, w)``, or ``None`` for each image's own size."""
        return self.transform.size

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """An image -> the normalised network input ``(3, h, w)`` (:class:`InferenceTransform`)."""
        return self.transform(image)

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[torch.Tensor | Image.Image | np.ndarray] | torch.Tensor,
        proposals: Sequence[torch.Tensor | None] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Instances of each image.

        Args:
            images: a list of images (PIL, ``(3, H, W)`` uint8 or float tensors, or
                ``(H, W, 3)`` uint8 arrays), or a ``(B, 3, H, W)`` tensor.
            proposals: one ``(P, H, W)`` bool tensor per image at that image's size (or
                ``None`` entries, computed by ``proposal_fn``).

        Returns:
            One dict per image, in the format of ``docs/conventions.md``: ``masks``
            (N, H, W) bool, ``labels`` (N,), ``scores`` (N,), ``boxes`` (N, 4), ``peaks``
            (N, 2) ``(x, y)``, ``prms`` (N, H, W), plus ``peak_values``,
            ``retrieval_scores``, ``instance_class_scores`` (N,) and image-level
            ``class_scores`` (C,) and ``class_peaks`` (C, 2). Instances are sorted by
            decreasing score. An image with no peak above the thresholds, or without
            usable proposals, gets ``N = 0``.
        """
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        if proposals is not None and len(proposals) != len(images):
            raise ValueError(f"{len(proposals)} proposal sets for {len(images)} images")
        outputs = []
        for index, raw in enumerate(images):
            image = to_image_tensor(raw)
            props = proposals[index] if proposals is not None else None
            image, props, size, work = self.working_inputs(image, props, index)
            output = self.retrieve(*self.respond(image, props, index))
            outputs.append(output if work == size else scale_back(output, size, work))
        return outputs

    def working_inputs(
        self, image: torch.Tensor, proposals: Any, index: int = 0
    ) -> tuple[torch.Tensor, Any, tuple[int, int], tuple[int, int]]:
        """An image (and its proposals) at the working size bounded by ``max_size``.

        Returns ``(image, proposals, size, work)``: ``size`` is the original ``(H, W)``,
        ``work`` the working one; when they differ (with a warning) the image has been
        scaled down and predictions made on it must go through :func:`scale_back`.
        """
        size = tuple(image.shape[1:])
        work = working_size(size, self.max_size)
        if work == size:
            return image, proposals, size, work
        warnings.warn(
            f"image {index} is {size[1]}x{size[0]} pixels, larger than max_size "
            f"{self.max_size}: predicted at {work[1]}x{work[0]} and scaled back",
            stacklevel=3,
        )
        small = F.interpolate(image[None], size=work, mode="bilinear", antialias=True)[0]
        if isinstance(proposals, CompactProposals) and proposals.size == size:
            proposals = proposals.resize(work)  # the label map only
        elif isinstance(proposals, torch.Tensor) and proposals.dim() == 3:
            if tuple(proposals.shape[1:]) == size:  # else at the working size already
                proposals = resize_nearest(proposals, work)
        return small, proposals, size, work

    @torch.no_grad()
    def respond(
        self, image: torch.Tensor, proposals: torch.Tensor | None = None, index: int = 0
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The first half of a prediction: peaks, their maps, and the proposals.

        Split from :meth:`retrieve` so that several retrieval settings can be tried on one
        image's maps without back-propagating again (see :func:`prm.engine.tune_retrieval`).

        Args:
            image (Tensor[3, H, W]): float in [0, 1].
            proposals (Tensor[P, H, W] | None): the image's proposals, or ``None`` for
                ``proposal_fn``.
            index: the image's position, for error messages.

        Returns:
            ``(response, proposals)``: the dict of :func:`prm.backprop.peak_response_maps`
            (maps at the network input size) and ``(P, H, W)`` proposals.
        """
        height, width = image.shape[1:]
        if proposals is None and callable(self.proposal_fn):
            # A generator with a compact form (SelectiveSearch) gives it: only the
            # proposals retrieval chooses are ever made dense.
            fn = getattr(self.proposal_fn, "propose", self.proposal_fn)
            proposals = fn(to_uint8_image(image))
        if proposals is not None:
            compact = isinstance(proposals, CompactProposals)
            if not compact and (not isinstance(proposals, torch.Tensor) or proposals.dim() != 3):
                raise ValueError(
                    f"image {index}: proposals must be a (P, H, W) tensor or CompactProposals"
                )
            if _proposal_size(proposals) != (height, width):
                raise ValueError(
                    f"image {index}: proposals are {_proposal_size(proposals)}, "
                    f"the image is {(height, width)}"
                )
        x = self.preprocess(image).to(self.device)
        if self.response == "prm":
            response = peak_response_maps(
                self.model,
                x[None],
                selection=self.peak_selection,
                chunk_size=self.chunk_size,
                smooth_strided=self.smooth_strided,
            )
        else:
            response = class_response_peak_maps(self.model, x[None], selection=self.peak_selection)
        response = self.refine_response(response[0])
        if proposals is None:
            proposals = self._fallback_proposals(response, image)
        return response, proposals

    def refine_response(self, response: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A hook between the maps and the proposals: the response as it is here
        (:class:`prm.pretrained.PretrainedPredictor` blurs and de-duplicates PRMs)."""
        return response

    @torch.no_grad()
    def retrieve(
        self,
        response: dict[str, torch.Tensor],
        proposals: torch.Tensor,
        retrieval: RetrievalConfig | None = None,
        terms: RetrievalTerms | None = None,
    ) -> dict[str, torch.Tensor]:
        """The second half of a prediction: one proposal per peak, NMS, full-size output.

        Args:
            response, proposals: from :meth:`respond`.
            retrieval: settings to use instead of the predictor's own.
            terms: :func:`prm.retrieval.retrieval_terms` of this response and these
                proposals, shared by many settings (tuning); the result is the same.

        Returns:
            The prediction dict (see :meth:`__call__`).
        """
        found = retrieve_instances(
            response["prms"],
            response["labels"],
            response["crm"],
            proposals,
            retrieval or self.retrieval,
            image_prms=_at_size(response.get("image_prms"), _proposal_size(proposals)),
            terms=terms,
            with_prms=self.keep_prms,
        )
        return self._assemble(response, found, _proposal_size(proposals))

    def _fallback_proposals(self, response: dict, image: torch.Tensor) -> torch.Tensor:
        """Proposal-free candidates from the PRMs, at the image's resolution.

        The PRMs are resized to the image once: the resized maps go into
        ``response["image_prms"]``, from which :meth:`retrieve` takes the output PRMs.
        """
        from prm.proposals import grabcut_proposals, prm_support_proposals

        size = tuple(image.shape[1:])
        prms = response["prms"]
        if len(prms) == 0:
            response["image_prms"] = torch.zeros((0, *size))
            return torch.zeros((0, *size), dtype=torch.bool)
        prms = F.interpolate(prms[None].float(), size=size, mode="bilinear")[0].cpu()
        response["image_prms"] = prms
        factor = getattr(self.model, "sub_pixel_factor", 1)
        crm_size = tuple(response["crm"].shape[1:])
        peaks = crm_to_image_coords(response["peak_cells"][:, 1:].cpu(), crm_size, factor, size)
        if self.proposal_fn == "grabcut":
            return grabcut_proposals(image.cpu(), prms, peaks)
        return prm_support_proposals(prms, peaks)

    def instance_scores(
        self,
        response: dict[str, torch.Tensor],
        peak_index: torch.Tensor,
        labels: torch.Tensor,
        retrieval_scores: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The instances' reported scores (by :attr:`score`) and their output order.

        Args:
            response: from :meth:`respond`.
            peak_index (Tensor[M], int64): the peak of each retrieved instance.
            labels (Tensor[M], int64): its class.
            retrieval_scores (Tensor[M], float32): its retrieval score.

        Returns:
            ``(scores (M,), order (M,))``: the output lists the instances by ``order``,
            decreasing score (ties: retrieval order).
        """
        scores = {
            "peak": lambda: response["peak_values"].cpu()[peak_index],
            "retrieval": lambda: retrieval_scores,
            "class": lambda: response["class_scores"].cpu()[labels],
        }[self.score]()
        return scores, torch.sort(scores, descending=True, stable=True).indices

    def _assemble(self, response: dict, found: dict, image_size: tuple[int, int]) -> dict:
        crm = response["crm"].cpu()
        factor = getattr(self.model, "sub_pixel_factor", 1)
        crm_size = tuple(crm.shape[1:])
        peak_index = found["peak_index"].cpu()
        labels = found["labels"].cpu()
        retrieval_scores = found["retrieval_scores"].cpu()
        scores, order = self.instance_scores(response, peak_index, labels, retrieval_scores)
        peak_values = response["peak_values"].cpu()[peak_index]
        class_scores = response["class_scores"].cpu()
        instance_class_scores = class_scores[labels]
        best_cell = crm.flatten(1).argmax(1)
        class_cells = torch.stack([best_cell // crm_size[1], best_cell % crm_size[1]], 1)
        masks = found["masks"].cpu()[order]
        result = {
            "masks": masks,
            "labels": labels[order],
            "scores": scores[order].float(),
            "boxes": found["boxes"].cpu()[order],
            "peaks": crm_to_image_coords(
                response["peak_cells"].cpu()[peak_index][order, 1:], crm_size, factor, image_size
            ),
            "peak_values": peak_values[order],
            "retrieval_scores": retrieval_scores[order],
            "instance_class_scores": instance_class_scores[order],
            "class_scores": class_scores,
            "class_peaks": crm_to_image_coords(class_cells, crm_size, factor, image_size),
        }
        if self.keep_prms:
            result["prms"] = found["prms"].cpu()[order]
            result["crm"] = crm  # (C, h, w) class response maps, for reports
        return result


def working_size(size: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """``(H, W)`` an image of ``size`` is worked on at: its longest side <= ``max_size``."""
    height, width = size
    if max_size is None or max(height, width) <= max_size:
        return (height, width)
    scale = max_size / max(height, width)
    return (max(1, round(height * scale)), max(1, round(width * scale)))


def scale_back(result: dict, size: tuple[int, int], work: tuple[int, int]) -> dict:
    """A prediction made at ``work`` size, with masks, boxes and points at ``size``."""
    result = dict(result)
    result["masks"] = resize_nearest(result["masks"], size)
    result["boxes"] = masks_to_boxes(result["masks"])
    factor = torch.tensor([size[1] / work[1], size[0] / work[0]])
    for key in ("peaks", "class_peaks"):
        result[key] = result[key] * factor
    return result


def _at_size(maps: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """``maps`` when they are ``(K, *size)``, else ``None``."""
    return maps if maps is not None and tuple(maps.shape[1:]) == tuple(size) else None


def _proposal_size(proposals: torch.Tensor | CompactProposals) -> tuple[int, int]:
    if isinstance(proposals, CompactProposals):
        return proposals.size
    return tuple(proposals.shape[1:])
