"""A CPU speed-up of the training's 3D convolutions (:func:`fast_conv3d`).

PyTorch picks the kernel of a float32 convolution on the CPU with a heuristic (ATen's
``ConvParams::use_mkldnn``): for one case (batch 1), one group and a kernel of at most 3 it
takes oneDNN (mkldnn) only when ``N * C * D * H > 20480``, else the plain im2col kernel
(``slow_conv3d``) — "for some case, native is faster", which holds for small 2D images but
not for these volumes. Every 3x3x3 convolution of the X2CT-GAN generator at 64^3 is such a
case (``C * S^2 = 16384`` at each level of its decoder), and its backward goes the same way.
Measured on this project's CPU, one thread: ``conv3d`` 4 -> 4 channels at 64^3, forward +
backward 274 ms by the plain kernel, 156 ms as a batch of two by oneDNN; the compact
generator's forward + backward at 64^3, 2.7 s -> 1.0 s.

:class:`SplitConv3d` is an ``nn.Conv3d`` whose "same" convolution of one case (odd kernel
``k``, stride 1, dilation 1, zero padding ``(k - 1) / 2``, one group, an even depth) runs as a
batch of two: the two halves of the volume along its first spatial axis, each with its
``(k - 1) / 2`` neighbouring planes (zeros at the volume's faces), which oneDNN takes in both
directions. It is the same convolution (the same products and sums; the rounding differs at
float32's last bits); every other call is ``nn.Conv3d``'s own. The weights and their
``state_dict`` keys do not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SplitConv3d", "fast_conv3d"]

_NATIVE_LIMIT = 20480  # ATen's threshold on N * C * D * H for batch-1 convolutions


class SplitConv3d(nn.Conv3d):
    """``nn.Conv3d`` computing a one-case "same" convolution as a batch of two halves (see
    the module doc); made by :func:`fast_conv3d` from an ``nn.Conv3d``."""

    def _split(self, x: torch.Tensor) -> bool:
        k = self.kernel_size
        return (x.dim() == 5 and x.shape[0] == 1 and self.groups == 1
                and self.padding_mode == "zeros" and self.stride == (1, 1, 1)
                and self.dilation == (1, 1, 1) and all(n % 2 == 1 for n in k)
                and tuple(self.padding) == tuple((n - 1) // 2 for n in k)
                and x.shape[2] % 2 == 0 and x.shape[2] >= 2 * k[0]
                and x.shape[1] * x.shape[2] * x.shape[3] <= _NATIVE_LIMIT)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if not self._split(x):
            return super()._conv_forward(x, weight, bias)
        p, half = self.padding[0], x.shape[2] // 2
        padded = F.pad(x, (0, 0, 0, 0, p, p))  # the depth's zero padding, made explicit
        halves = torch.cat([padded[:, :, :half + 2 * p], padded[:, :, half:]])
        out = F.conv3d(halves, weight, bias, 1, (0, self.padding[1], self.padding[2]))
        return torch.cat([out[:1], out[1:]], dim=2)


def fast_conv3d(module: nn.Module | None) -> int:
    """Make every plain ``nn.Conv3d`` in ``module`` a :class:`SplitConv3d` (in place: the
    same parameters); return how many. For CPU training with oneDNN (a no-op where
    ``torch.backends.mkldnn`` is unavailable or off)."""
    if module is None or not (torch.backends.mkldnn.is_available()
                              and torch.backends.mkldnn.enabled):
        return 0
    n = 0
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = SplitConv3d
            n += 1
    return n
