"""Peak back-propagation: from each class peak to a Peak Response Map (docs/method.md §4).

For each kept peak ``(b, c, y, x)`` a unit gradient placed at that one CRM position is
back-propagated to the input image, with every convolution's backward replaced by the
paper's probabilistic top-down rule. For a convolution with input ``U``, weights ``W``
and bias ``b`` the forward value is unchanged (``conv(U, W, b)``), and with
``m = min(U)`` (a constant), ``U' = U - m``, ``W+ = max(W, 0)``, ``Z = conv(U', W+)``::

    grad_U = U' * conv_transpose(grad_out / Z, W+)        (ratio := 0 where Z < 1e-10)

so each output cell's probability is shared among its inputs in proportion to
``(input - min) x positive weight``. Every other layer keeps its ordinary gradient
(BatchNorm in eval mode is the affine scale, ReLU masks, max-pool routes, residual
additions and bilinear upsampling pass gradients as usual).

The rule is applied by :func:`peak_backprop_rule`, a context manager built on
``torch.overrides.TorchFunctionMode``: it intercepts ``conv2d`` calls made *inside the
block* and changes neither any class, nor any module, nor any hook, so the model is
untouched afterwards (also when the block raises). Gradients are taken with respect to
the input only, and the peaks of one image are back-propagated ``chunk_size`` at a time
over one forward pass (``torch.autograd.grad``, batched with ``is_grads_batched``).
On a CPU, one peak at a time, each convolution's backward is computed on only the rows
and columns of its maps that the peak's gradient reaches (it starts at one cell and
grows by a kernel's reach per layer): on the demo's small network at 128 px this makes
back-propagation 1.1-1.5x faster (1 to 16 peaks), with the same maps to float rounding
(a test compares them with the whole maps' computation).

Differences from the authors' code, on purpose: ``m`` is the minimum over each image's
own activations (the authors ran one image per batch, so this equals their rule and keeps
images of a batch independent); the authors patch ``nn.Conv2d.forward`` globally and loop
over peaks one at a time with batch size 1.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "PeakSelection",
    "class_response_peak_maps",
    "normalize_prms",
    "peak_backprop_rule",
    "peak_response_maps",
    "select_peaks",
]

_EPS = 1e-10


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _ProbConv2d(torch.autograd.Function):
    """conv2d whose backward is the PRM rule; gradients reach the input only."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups, smooth=False):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _, stride, padding, dilation, groups, smooth = inputs
        with torch.no_grad():
            # m = min(U) per image (see the module docstring), U' = U - m >= 0.
            shifted = input - input.amin(dim=(1, 2, 3), keepdim=True)
            positive = weight.clamp(min=0)
            z = F.conv2d(shifted, positive, None, stride, padding, dilation, groups)
            # z >= 0 (both factors are), so |z| = z: three passes instead of six.
            inv_z = (z + _EPS).reciprocal_().masked_fill_(z < _EPS, 0.0)
        ctx.save_for_backward(shifted, positive, inv_z)
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
        # conv_transpose needs output_padding to recover the input size exactly.
        output_padding = tuple(
            size_in - ((size_out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size_in, size_out, k, s, p, d in zip(
                input.shape[2:], output.shape[2:], weight.shape[2:], stride, padding, dilation
            )
        )
        ctx.conv = (stride, padding, output_padding, groups, dilation)
        ctx.smooth = bool(smooth) and max(stride) > 1

    @staticmethod
    def backward(ctx, grad_output):
        shifted, positive, inv_z = ctx.saved_tensors
        stride, padding, output_padding, groups, dilation = ctx.conv
        window = _support(grad_output)
        if window is None:
            spread = F.conv_transpose2d(
                grad_output * inv_z, positive, None, stride, padding, output_padding, groups,
                dilation,
            )  # fmt: skip
            grad = shifted * spread
            return (_tent_blur(grad, stride) if ctx.smooth else grad), *[None] * 7
        return _cropped_backward(ctx, grad_output, window), *[None] * 7


#: Back-propagate a peak through only the part of each map that its gradient reaches
#: (see :func:`_cropped_backward`); a switch for the test that compares it with the
#: whole maps.
_CROP = True


def _support(grad: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)``: the rows and columns where ``grad (B, C, h, w)`` is not 0,
    when they cover under half of the map and cropping can pay; else ``None``.

    A peak's gradient starts at one cell and grows by a kernel's reach per layer, so in a
    small network most of every map stays 0 (on the 128 px demo the 59 px receptive field
    of one stride-8 cell). Not under ``vmap`` (peaks in chunks): its size is data.
    """
    if not _CROP or grad.device.type != "cpu" or _batched(grad):
        return None
    nonzero = grad.reshape(-1, *grad.shape[2:]).any(0)  # a float's any: not 0
    rows, cols = nonzero.any(1).nonzero()[:, 0], nonzero.any(0).nonzero()[:, 0]
    if len(rows) == 0:
        return 0, 0, 0, 0
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if 2 * (y1 - y0) * (x1 - x0) > nonzero.numel():
        return None
    return y0, y1, x0, x1


def _batched(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is batched by ``vmap`` (``is_grads_batched`` uses the legacy
    batching), where the data-dependent sizes of a crop cannot be taken."""
    functorch = torch._C._functorch
    return functorch.is_legacy_batchedtensor(tensor) or functorch.is_functorch_wrapped_tensor(
        tensor
    )


def _cropped_backward(ctx, grad_output: torch.Tensor, window) -> torch.Tensor:
    """:class:`_ProbConv2d`'s backward computed on the cells of ``grad_output`` inside
    ``window`` (:func:`_support`; 0 outside it) and the inputs they read: the same
    products and sums as on the whole maps, whose other terms are all 0, so the result
    equals the whole maps' to float rounding (a test compares them)."""
    shifted, positive, inv_z = ctx.saved_tensors
    stride, padding, _, groups, dilation = ctx.conv
    grad = torch.zeros_like(shifted)
    y0, y1, x0, x1 = window
    if y0 == y1:
        return grad
    cells = (slice(y0, y1), slice(x0, x1))
    spread = F.conv_transpose2d(
        grad_output[..., cells[0], cells[1]] * inv_z[..., cells[0], cells[1]],
        positive, None, stride, 0, 0, groups, dilation,
    )  # fmt: skip
    # Output cell o reads inputs o * stride - padding + dilation * j, j < kernel: the
    # transposed convolution without padding starts at input y0 * stride - padding.
    height, width = shifted.shape[2:]
    top, left = y0 * stride[0] - padding[0], x0 * stride[1] - padding[1]
    rows = slice(max(top, 0), min(top + spread.shape[2], height))
    cols = slice(max(left, 0), min(left + spread.shape[3], width))
    spread = spread[..., rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    if not ctx.smooth:
        grad[..., rows, cols] = shifted[..., rows, cols] * spread
        return grad
    # The tent reaches stride - 1 cells: blurred with that margin of zeros around the
    # crop (or up to the border, where its replicate padding sees the same values).
    reach = [s - 1 for s in stride]
    outer = (
        slice(max(rows.start - reach[0], 0), min(rows.stop + reach[0], height)),
        slice(max(cols.start - reach[1], 0), min(cols.stop + reach[1], width)),
    )
    part = shifted.new_zeros(
        (*shifted.shape[:2], outer[0].stop - outer[0].start, outer[1].stop - outer[1].start)
    )
    inner = (
        slice(rows.start - outer[0].start, rows.stop - outer[0].start),
        slice(cols.start - outer[1].start, cols.stop - outer[1].start),
    )
    part[..., inner[0], inner[1]] = shifted[..., rows, cols] * spread
    grad[..., outer[0], outer[1]] = _tent_blur(part, stride)
    return grad


def _tent_blur(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """``x`` blurred per channel by a tent of the stride's period (mass kept inside).

    A strided convolution covers its input unevenly (with a 3x3 kernel and stride 2,
    every other row is read by two output rows, the rest by one), which the rule turns
    into a checkerboard of the stride's period; the tent ``[1, 2, ..., s, ..., 2, 1] / s^2``
    (a box of ``s`` convolved with itself) evens it out.
    """
    channels = x.shape[-3]
    for axis, s in enumerate(stride):
        if s <= 1:
            continue
        t = torch.cat([torch.arange(1, s + 1), torch.arange(s - 1, 0, -1)]).to(x) / s**2
        shape = (1, 1, 1, len(t)) if axis == 1 else (1, 1, len(t), 1)
        pad = (s - 1, s - 1, 0, 0) if axis == 1 else (0, 0, s - 1, s - 1)
        flat = x.reshape(-1, *x.shape[-3:])
        kernel = t.view(shape).expand(channels, -1, -1, -1)
        flat = F.conv2d(F.pad(flat, pad, mode="replicate"), kernel, groups=channels)
        x = flat.reshape(x.shape)
    return x


class _ProbLinear(torch.autograd.Function):
    """linear whose backward is the PRM rule (a 1x1 convolution on channels-last maps).

    ConvNeXt-style blocks apply their pointwise convolutions as ``nn.Linear`` on
    ``(B, H, W, C)`` maps; the rule treats them as the 1x1 convolutions they are, with
    ``m`` the minimum over each image's whole input, as for ``conv2d``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias):
        return F.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _ = inputs
        with torch.no_grad():
            dims = tuple(range(1, input.dim()))
            shifted = input - input.amin(dim=dims, keepdim=True) if dims else input - input.min()
            positive = weight.clamp(min=0)
            z = F.linear(shifted, positive)
            inv_z = (z + _EPS).reciprocal_().masked_fill_(z < _EPS, 0.0)
        ctx.save_for_backward(shifted, positive, inv_z)

    @staticmethod
    def backward(ctx, grad_output):
        shifted, positive, inv_z = ctx.saved_tensors
        return shifted * ((grad_output * inv_z) @ positive), None, None


class _EvalBatchNorm(torch.autograd.Function):
    """Eval-mode batch norm with an explicit affine backward.

    The value is ``F.batch_norm``'s own; the backward ``grad * weight / sqrt(var + eps)``
    is what autograd would compute, written out so that ``vmap`` batches it instead of
    falling back to a per-peak loop.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, running_mean, running_var, weight, bias, eps):
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, _, running_var, weight, _, eps = inputs
        with torch.no_grad():
            scale = torch.rsqrt(running_var + eps)
            if weight is not None:
                scale = scale * weight
        ctx.save_for_backward(scale.view(1, -1, *([1] * (input.dim() - 2))))

    @staticmethod
    def backward(ctx, grad_output):
        (scale,) = ctx.saved_tensors
        return grad_output * scale, None, None, None, None, None


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BN_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5}


def _bind(names, defaults, args, kwargs) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return tensor.detach() if tensor is not None else None


def _numeric_padding(padding: Any, weight: torch.Tensor, dilation: Any) -> Any:
    if padding == "valid":
        return 0
    if padding == "same":
        pads = [d * (k - 1) for k, d in zip(weight.shape[2:], _pair(dilation))]
        if any(p % 2 for p in pads):
            raise ValueError("peak back-propagation needs symmetric padding ('same', even kernel)")
        return tuple(p // 2 for p in pads)
    return padding


class _PeakBackpropMode(TorchFunctionMode):
    def __init__(self, smooth_strided: bool = False):
        super().__init__()
        self.smooth_strided = smooth_strided

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            a = _bind(_CONV_ARGS, _CONV_DEFAULTS, args, kwargs)
            if a["input"].dim() != 4:
                raise ValueError("peak back-propagation needs batched (B, C, H, W) conv inputs")
            padding = _numeric_padding(a["padding"], a["weight"], a["dilation"])
            conv = (a["stride"], padding, a["dilation"], a["groups"], self.smooth_strided)
            return _ProbConv2d.apply(a["input"], a["weight"].detach(), _detached(a["bias"]), *conv)
        if func is F.linear:
            a = _bind(("input", "weight", "bias"), {"bias": None}, args, kwargs)
            return _ProbLinear.apply(a["input"], a["weight"].detach(), _detached(a["bias"]))
        if func is F.batch_norm:
            a = _bind(_BN_ARGS, _BN_DEFAULTS, args, kwargs)
            if not a["training"] and a["running_mean"] is not None:
                stats = (a["running_mean"], a["running_var"])
                affine = (_detached(a["weight"]), _detached(a["bias"]))
                return _EvalBatchNorm.apply(a["input"], *stats, *affine, a["eps"])
        return func(*args, **kwargs)


@contextmanager
def peak_backprop_rule(smooth_strided: bool = False) -> Iterator[None]:
    """Context manager: inside it, every ``conv2d`` back-propagates by the PRM rule.

    With ``smooth_strided=True`` (not the paper's rule: an option for off-the-shelf
    networks) the input share of every strided convolution is blurred by a tent of the
    stride's period, which removes the checkerboard that strided (depthwise)
    convolutions leave in the maps; the mass each channel receives is unchanged up to
    the image border.

    ``linear`` layers too (pointwise convolutions written as ``nn.Linear`` on
    channels-last maps, as in ConvNeXt). Grouped and depthwise convolutions follow the
    same rule within each group; activations (ReLU6, SiLU, GELU, hard-swish), squeeze-
    excitation gates (whose own 1x1 convolutions also follow the rule), LayerNorm and
    pooling keep their ordinary gradients, as every non-convolution layer does.

    Only calls made inside the ``with`` block are affected, on this thread; no class,
    module or hook is modified, so nothing needs undoing when the block raises. The
    forward values are unchanged; parameters receive no gradient from these convolutions.

    Example::

        x = images.requires_grad_()
        with peak_backprop_rule():
            crm = model.class_response_maps(x)
        crm[0, c, y, x0].backward()        # x.grad is the (unnormalised) peak response
    """
    with _PeakBackpropMode(smooth_strided):
        yield


def normalize_prms(grad: torch.Tensor) -> torch.Tensor:
    """Input gradients to peak response maps.

    Sum over the colour channels, clamp at 0, divide by the sum; an all-zero map stays
    all zero (never NaN).

    Args:
        grad (Tensor[K, 3, H, W]): input gradients, one per peak.

    Returns:
        Tensor[K, H, W]: non-negative maps that each sum to 1 (or are all zero).
    """
    prm = grad.sum(1).clamp(min=0)
    total = prm.flatten(1).sum(1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return prm / safe[:, None, None]


@dataclass(frozen=True)
class PeakSelection:
    """Which peaks are back-propagated into peak response maps (docs/method.md §4).

    A peak of class ``c`` in image ``b`` is kept when the class score
    ``s(b, c) >= class_threshold`` and, with ``peak_threshold`` given,

    - ``peak_threshold_mode="absolute"`` (the authors'): its CRM value
      ``> peak_threshold`` (the authors use 30 in logit units, which depends on the
      trained model);
    - ``"relative"``: its CRM value ``>= min + t * (max - min)`` of that (image, class)
      map, ``t = peak_threshold`` in ``[0, 1]``; independent of the logit scale, and the
      strongest peak of a map always passes.

    Attributes:
        class_threshold: minimum class score (0: the classes the network calls present).
        peak_threshold: see above; ``None`` keeps every peak of a class that passes.
        peak_threshold_mode: ``"absolute"`` or ``"relative"``.
    """

    class_threshold: float = 0.0
    peak_threshold: float | None = None
    peak_threshold_mode: Literal["absolute", "relative"] = "absolute"

    def __post_init__(self) -> None:
        for name in ("class_threshold", "peak_threshold"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, numbers.Real) and value == value):
                raise ValueError(f"{name} must be a number (not NaN), got {value!r}")
        if self.peak_threshold_mode not in ("absolute", "relative"):
            raise ValueError(
                "peak_threshold_mode must be 'absolute' or 'relative', "
                f"got {self.peak_threshold_mode!r}"
            )
        if self.peak_threshold_mode == "relative" and self.peak_threshold is not None:
            if not 0.0 <= self.peak_threshold <= 1.0:
                raise ValueError(
                    f"a relative peak_threshold must lie in [0, 1], got {self.peak_threshold}"
                )


def select_peaks(
    crm: torch.Tensor,
    peak_positions: torch.Tensor,
    class_scores: torch.Tensor,
    selection: PeakSelection = PeakSelection(),
) -> torch.Tensor:
    """Which peaks to back-propagate, as :class:`PeakSelection` says (docs/method.md §4).

    Args:
        crm (Tensor[B, C, h, w]): class response maps.
        peak_positions (Tensor[K, 4]): ``(b, c, y, x)`` rows, as
            :func:`prm.peaks.find_peaks` returns them.
        class_scores (Tensor[B, C]): class scores.
        selection: the thresholds.

    Returns:
        Tensor[K] (bool): the peaks to keep.
    """
    b, c, y, x = peak_positions.unbind(1)
    keep = class_scores[b, c] >= selection.class_threshold
    if selection.peak_threshold is None:
        return keep
    values = crm[b, c, y, x]
    if selection.peak_threshold_mode == "absolute":
        return keep & (values > selection.peak_threshold)
    flat = crm.flatten(2)
    low, high = flat.amin(2)[b, c], flat.amax(2)[b, c]
    # Written from the top so that t = 1 gives exactly the maximum (no rounding).
    return keep & (values >= high - (1.0 - selection.peak_threshold) * (high - low))


def _default_chunk_size(device: torch.device) -> int:
    # Measured (benchmarks/backprop.py): on a CPU batching peaks brings no speed-up over
    # one peak at a time and costs memory; on a GPU it fills the device.
    return 1 if device.type == "cpu" else 16


def peak_response_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    selection: PeakSelection = PeakSelection(),
    chunk_size: int | None = None,
    smooth_strided: bool | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Peak response maps of every kept peak of every image.

    Each image gets one forward pass under :func:`peak_backprop_rule`; its kept peaks
    are back-propagated ``chunk_size`` at a time (batched with ``is_grads_batched``), with
    respect to the input only. The model must be in eval mode (BatchNorm as an affine
    map) and is left exactly as it was.

    Args:
        model: a :class:`~prm.model.PeakResponseNet` (anything with
            ``class_response_maps``, ``aggregate`` and ``find_peaks`` works).
        images (Tensor[B, 3, H, W]): normalised float images.
        selection: which peaks (:class:`PeakSelection`; by default those of the classes
            with a non-negative score, without a peak threshold).
        chunk_size: peaks back-propagated at once (bounds memory to about ``chunk_size``
            times one backward pass). ``None``: 1 on CPU, 16 on GPU.
        smooth_strided: the smoothed rule of :func:`peak_backprop_rule`; ``None`` takes
            the model's ``smooth_strided`` attribute (False when it has none).

    Returns:
        One dict per image:

        - ``"peak_cells"`` (Tensor[K, 3], int64): ``(c, y, x)`` of each kept peak, in
          cells of the CRM below (not image pixels);
        - ``"labels"`` (Tensor[K], int64): the peak's class ``c``;
        - ``"peak_values"`` (Tensor[K]): the CRM value at the peak;
        - ``"prms"`` (Tensor[K, H, W]): peak response maps at the input resolution, each
          non-negative and summing to 1 (all zero if the rule gives no positive mass);
        - ``"class_scores"`` (Tensor[C]): class scores of the image;
        - ``"crm"`` (Tensor[C, h, w]): its class response maps.

        An image with no peak above the thresholds gets ``K = 0`` (empty tensors), not
        an error.
    """
    _check_inputs(model, images)
    if chunk_size is None:
        chunk_size = _default_chunk_size(images.device)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if smooth_strided is None:
        smooth_strided = bool(getattr(model, "smooth_strided", False))

    results = []
    for image in images.detach():
        # Plain autograd, one forward per image: measured no slower than the authors'
        # loop (benchmarks/backprop.py), where ``torch.func.vjp`` cost up to 1.5x on a CPU.
        x = image[None].clone().requires_grad_()
        with torch.enable_grad(), peak_backprop_rule(smooth_strided):
            crm_graph = model.class_response_maps(x)
        crm = crm_graph.detach()
        scores, peaks = _kept_peaks(model, crm, selection)
        prms = []
        for start in range(0, len(peaks), chunk_size):
            chunk = peaks[start : start + chunk_size]
            # One-hot cotangents at each peak: (k, 1, C, h, w).
            onehot = torch.zeros((len(chunk), *crm.shape), dtype=crm.dtype, device=crm.device)
            onehot[torch.arange(len(chunk)), 0, chunk[:, 1], chunk[:, 2], chunk[:, 3]] = 1
            if len(chunk) == 1:
                (grad,) = torch.autograd.grad(crm_graph, x, onehot[0], retain_graph=True)
            else:
                # vmap over the backward pass only (the rule's backward is vmappable).
                (grad,) = torch.autograd.grad(
                    crm_graph, x, onehot, retain_graph=True, is_grads_batched=True
                )
                grad = grad[:, 0]
            prms.append(normalize_prms(grad))
        height, width = image.shape[1:]
        maps = torch.cat(prms) if prms else crm.new_zeros((0, height, width))
        results.append(_response(crm, scores, peaks, maps))
        del crm_graph, x  # free this image's graph before the next forward
    return results


def _check_inputs(model: nn.Module, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (normalised), got {images.dtype}")
    if torch.isnan(images).any():
        raise ValueError("images contain NaN")
    if model.training:
        raise ValueError("peak back-propagation needs the model in eval mode: call model.eval()")


@torch.no_grad()
def _kept_peaks(model, crm, selection: PeakSelection):
    """Class scores ``(1, C)`` and the kept peak positions ``(K, 4)`` of one image's CRMs."""
    scores = model.aggregate(crm)
    positions = model.find_peaks(crm)
    return scores, positions[select_peaks(crm, positions, scores, selection)]


def _response(crm, scores, peaks, maps) -> dict[str, torch.Tensor]:
    return {
        "peak_cells": peaks[:, 1:],
        "labels": peaks[:, 1],
        "peak_values": crm[0, peaks[:, 1], peaks[:, 2], peaks[:, 3]],
        "prms": maps,
        "class_scores": scores[0],
        "crm": crm[0],
    }


@torch.no_grad()
def class_response_peak_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    selection: PeakSelection = PeakSelection(),
) -> list[dict[str, torch.Tensor]]:
    """The CAM baseline of :func:`peak_response_maps`: class response maps as the "PRMs".

    The same peaks are kept, but each peak's map is its class's whole response map,
    upsampled (bilinear) to the input size, clamped at 0 and normalised to sum 1, so all
    peaks of a class share one map: class-aware but not instance-aware cues (the paper's
    CAM + proposals baseline). No back-propagation happens.

    Args and returns: as :func:`peak_response_maps` (``"prms"`` holds the class maps).
    """
    _check_inputs(model, images)
    results = []
    for image in images:
        crm = model.class_response_maps(image[None])
        scores, peaks = _kept_peaks(model, crm, selection)
        size = tuple(image.shape[1:])
        if len(peaks) == 0:
            maps = crm.new_zeros((0, *size))
        else:
            classes, inverse = torch.unique(peaks[:, 1], return_inverse=True)
            maps = F.interpolate(crm[:, classes], size=size, mode="bilinear")[0]
            maps = normalize_prms(maps[:, None])[inverse]
        results.append(_response(crm, scores, peaks, maps))
    return results
