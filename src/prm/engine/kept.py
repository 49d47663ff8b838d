"""Outputs of a frozen computation kept per training input across epochs.

Without scale or colour jitter (:func:`prm.engine.train.inputs_repeat`) a training image
reaches the network in one of two forms in every epoch: itself or its mirror image.
Whatever a frozen module computes from it (a teacher's class response maps, the features
of a frozen pretrained stem) is then one of two tensors. :class:`KeptOutputs` computes
each the first time its input is seen and answers it from memory later. A kept row is
found by the image's name *and* a digest of the input's bytes, so a flipped (or any
otherwise changed) input is never answered with another input's output; the tests
compare whole training runs with and without keeping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

__all__ = ["KeptOutputs"]


def _digest(row: torch.Tensor) -> str:
    # The bytes in logical (C) order, whatever the memory format: the same values give
    # the same digest.
    return hashlib.sha1(row.detach().cpu().numpy().tobytes()).hexdigest()


def _like(rows: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``rows`` in ``batch``'s memory format (indexing rows out of a channels-last
    batch gives a contiguous tensor, which would send it down another kernel)."""
    if (
        rows.dim() == 4
        and not batch.is_contiguous()
        and batch.is_contiguous(memory_format=torch.channels_last)
    ):
        return rows.contiguous(memory_format=torch.channels_last)
    return rows


class KeptOutputs:
    """``fn(inputs)`` for a batch, kept per input up to ``cache_bytes``.

    Args:
        fn: a function of a batch ``(B, ...)`` to a batch ``(B, ...)`` whose row ``i``
            depends on input row ``i`` only (a frozen network in eval mode), run
            without gradients.
        cache_bytes: the most bytes kept (0: nothing is kept).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], cache_bytes: int):
        self.fn = fn
        self.cache_bytes = int(cache_bytes)
        self._kept: dict[tuple[str, str], torch.Tensor] = {}
        self._row_bytes: int | None = None
        # Kept rows are stored contiguous; a batch made of them is given the memory
        # format that ``fn`` returned, so what follows computes as on fresh rows.
        self._format = torch.contiguous_format

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.fn(inputs)
        if (
            out.dim() == 4
            and not out.is_contiguous()
            and out.is_contiguous(memory_format=torch.channels_last)
        ):
            self._format = torch.channels_last
        return out

    def _keep(self, names: Sequence[tuple[str, str]], out: torch.Tensor) -> None:
        if self._row_bytes is None:
            self._row_bytes = out[0].numel() * out.element_size()
        for name, one in zip(names, out):
            if (
                name not in self._kept
                and (len(self._kept) + 1) * self._row_bytes <= self.cache_bytes
            ):
                self._kept[name] = one.clone(memory_format=torch.contiguous_format)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """``fn(inputs)``; the rows of inputs seen before come from memory.

        Args:
            inputs (Tensor[B, ...]): the batch.
            keys: a name for each row (the image's ``image_id``); with the digest of the
                row's bytes it finds the row's kept output. ``None`` computes and keeps
                nothing.

        Returns:
            Tensor[B, ...]: ``fn(inputs)``. A batch none of whose rows is kept is
            computed whole; otherwise only its new rows are, as a smaller batch (equal
            to the whole batch's rows up to float rounding, if the kernels round
            differently by batch size).
        """
        if keys is None or self.cache_bytes <= 0:
            return self._run(inputs)
        if len(keys) != len(inputs):
            raise ValueError(f"{len(keys)} keys for a batch of {len(inputs)}")
        names = [(str(key), _digest(row)) for key, row in zip(keys, inputs)]
        new = [i for i, name in enumerate(names) if name not in self._kept]
        if len(new) == len(names):
            out = self._run(inputs)
            self._keep(names, out)
            return out
        if new:
            fresh = self._run(_like(inputs[new], inputs))
            self._keep([names[i] for i in new], fresh)
            computed = dict(zip(new, fresh))
        else:
            computed = {}
        rows = [computed[i] if i in computed else self._kept[names[i]] for i in range(len(names))]
        return torch.stack(rows).contiguous(memory_format=self._format)
