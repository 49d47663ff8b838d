"""KeptOutputs: a frozen computation's outputs kept per input, found by name and bytes."""

import pytest
import torch
from torch import nn

from prm.engine.kept import KeptOutputs


def _frozen_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    return net.eval().to(memory_format=torch.channels_last)


class _Counted:
    def __init__(self, net: nn.Module):
        self.net, self.rows, self.formats = net, [], []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(len(x))
        self.formats.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.net(x)


def test_kept_rows_answer_repeated_inputs_and_mirrors_are_new_inputs():
    net = _frozen_net()
    fn = _Counted(net)
    kept = KeptOutputs(fn, cache_bytes=1 << 20)
    images = torch.randn(6, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    keys = [f"img{i}" for i in range(6)]
    with torch.no_grad():
        want = net(images)
        want_flipped = net(images.flip(-1))
    out = kept(images[:4], keys[:4])  # all new: one whole batch
    torch.testing.assert_close(out, want[:4])
    # Images 2, 3 seen; 4, 5 new; image 1 mirrored under the same name is a new input.
    batch = torch.stack([images[2], images[1].flip(-1), images[4], images[3], images[5]])
    batch = batch.contiguous(memory_format=torch.channels_last)
    names = ["img2", "img1", "img4", "img3", "img5"]
    out = kept(batch, names)
    expected = torch.stack([want[2], want_flipped[1], want[4], want[3], want[5]])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert fn.rows == [4, 3]  # only the three new inputs ran, as one smaller batch
    assert all(fn.formats)  # the smaller batch kept the channels-last layout
    # Everything seen: answered from memory, no call.
    out = kept(batch, names)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert fn.rows == [4, 3]
    # No keys: computed, nothing kept or read.
    kept(batch, None)
    assert fn.rows == [4, 3, 5]


def test_kept_outputs_stay_within_their_bytes_and_zero_keeps_nothing():
    net = _frozen_net()
    images = torch.randn(4, 3, 10, 10)
    keys = list("abcd")
    row_bytes = 8 * 10 * 10 * 4
    fn = _Counted(net)
    kept = KeptOutputs(fn, cache_bytes=2 * row_bytes)
    kept(images, keys)
    kept(images, keys)  # two of four kept: the other two run again
    assert fn.rows == [4, 2]
    fn = _Counted(net)
    kept = KeptOutputs(fn, cache_bytes=0)
    kept(images, keys)
    kept(images, keys)
    assert fn.rows == [4, 4]
    with pytest.raises(ValueError, match="3 keys for a batch of 4"):
        KeptOutputs(fn, 1 << 20)(images, keys[:3])
