"""Outputs of a frozen computation kept per training image across epochs.

When every training image reaches the network identically in every epoch (no flip, no
jitter: :func:`prm.engine.train.same_input_every_epoch`), whatever a frozen module
computes from it is the same in every epoch too: a teacher's class response maps, or
the features of a frozen pretrained stem. :class:`KeptOutputs` computes them in the
first epoch and answers later batches from memory, which changes no number (the tests
compare whole training runs with and without).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["KeptOutputs"]


class KeptOutputs:
    """``fn(inputs)`` for a batch, kept per image key up to ``cache_bytes``.

    Args:
        fn: a function of a batch ``(B, ...)`` to a batch ``(B, ...)`` whose row ``i``
            depends on input row ``i`` only (a frozen network in eval mode), run
            without gradients.
        cache_bytes: the most bytes kept (0: nothing is kept).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], cache_bytes: int):
        self.fn = fn
        self.cache_bytes = int(cache_bytes)
        self._kept: dict[str, torch.Tensor] = {}
        # Kept rows are stored contiguous; a batch made of them is given the memory
        # format that ``fn`` returned, so what follows computes exactly as on fresh rows.
        self._format = torch.contiguous_format

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """``fn(inputs)``, from memory when every key of the batch is kept.

        Args:
            inputs (Tensor[B, ...]): the batch.
            keys: a name for each row (the image's ``image_id``) that says everything
                about its input; ``None`` computes and keeps nothing.

        Returns:
            Tensor[B, ...]: ``fn(inputs)``.
        """
        if keys is not None and self._kept and all(key in self._kept for key in keys):
            out = torch.stack([self._kept[key] for key in keys])
            return out.contiguous(memory_format=self._format)
        out = self.fn(inputs)
        if (
            out.dim() == 4
            and not out.is_contiguous()
            and out.is_contiguous(memory_format=torch.channels_last)
        ):
            self._format = torch.channels_last
        if keys is not None and self.cache_bytes > 0:
            size = out[0].numel() * out.element_size()
            for key, one in zip(keys, out):
                if key not in self._kept and (len(self._kept) + 1) * size <= self.cache_bytes:
                    self._kept[key] = one.clone(memory_format=torch.contiguous_format)
        return out
