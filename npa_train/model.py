"""A small fully convolutional network that trains on a CPU.

Not the paper's ResNet-101 models: a compact stand-in so that the loss can be
compared end to end on a laptop. Encoder of conv-BN-ReLU blocks down to stride 8
(the last blocks dilated for context), a 1x1 classifier, a 1x1 skip classifier
from stride 4 added in (as in FCN-8s), and bilinear upsampling to the input size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SmallFCN"]


def _block(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallFCN(nn.Module):
    """Small FCN: stride-8 encoder, 1x1 classifiers at strides 8 and 4, bilinear upsampling.

    Args:
        in_channels: Image bands (3 for IRRG/RGB, 4 for RGBIR).
        num_classes: Output classes.
        width: Channels of the first stage (doubled at each of the two further
            downsamplings). Default 24.

    Shape:
        - input: ``(N, in_channels, H, W)``, any ``H, W`` (not necessarily multiples of 8).
        - output: ``(N, num_classes, H, W)`` logits.

    Raises:
        ValueError: ``in_channels``, ``num_classes`` or ``width`` below 1.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 6, *, width: int = 24) -> None:
        super().__init__()
        for name, v in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("width", width),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {v!r}")
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        c1, c2, c3 = width, 2 * width, 4 * width
        self.stage1 = nn.Sequential(_block(in_channels, c1, stride=2), _block(c1, c1))  # /2
        self.stage2 = nn.Sequential(_block(c1, c2, stride=2), _block(c2, c2))  # /4
        self.stage3 = nn.Sequential(  # /8
            _block(c2, c3, stride=2), _block(c3, c3, dilation=2), _block(c3, c3, dilation=4)
        )
        self.classifier = nn.Conv2d(c3, num_classes, 1)
        self.skip = nn.Conv2d(c2, num_classes, 1)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        f4 = self.stage2(self.stage1(x))
        out = self.classifier(self.stage3(f4))
        out = F.interpolate(out, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        out = out + self.skip(f4)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def config(self) -> dict:
        """Constructor arguments (stored in checkpoints): ``SmallFCN(**config)``."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "width": self.width,
        }
