"""The device a command runs on (``resolve_device``), and optional accelerations for GPUs: lower-precision
arithmetic and torch.compile of the networks.

Both change the numerics, so both are off by default (``--precision fp32 --compile none``):

- ``--precision tf32``: float32 matrix products on TensorFloat-32 tensor cores (CUDA only; convolutions
  already use them by PyTorch's default).
- ``--precision bf16``: the networks under ``torch.autocast`` to bfloat16. Distribution parameters, GRU states
  and decoded frames are cast back to float32 (nets.py), so log-densities, KLs and the recurrent state
  accumulate in float32.
- ``--compile default | max-autotune``: ``torch.compile`` (Inductor) of the encoder, decoder and each level's
  GRU step and heads: fewer, fused kernels per latent step. The Pyro programs themselves stay plain Python.
  CUDA graphs (``reduce-overhead``) are not offered: one training step replays the per-step cell hundreds of
  times while keeping every output alive for the backward pass, which CUDA-graph replay would overwrite.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import UserError
from .nets import CWVAENets


def set_matmul_precision(precision: str, device: torch.device) -> None:
    """Allow TF32 matrix products for ``tf32``; refuse it where there is no tensor core to use it."""
    if precision == "tf32" and device.type != "cuda":
        raise UserError("--precision tf32 needs a CUDA device (on a CPU it would change nothing)")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the networks run in: bfloat16 autocast for ``bf16``, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_nets(nets: CWVAENets, mode: str) -> None:
    """Compile the networks' forward passes in place (parameter names, and so checkpoints, are unchanged)."""
    if mode == "none":
        return
    modules = [nets.encoder.conv, *nets.encoder.stacks, nets.decoder]
    for level in nets.levels:
        modules += [level.transition, level.posterior]  # the transition's forward is the prior head
        level.transition.gru_step = torch.compile(level.transition.gru_step, mode=mode, dynamic=False)
    for module in modules:
        module.forward = torch.compile(module.forward, mode=mode, dynamic=False)


def resolve_device(name: str) -> torch.device:
    """The device of ``--device``: auto picks CUDA when this torch build sees one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch build sees no CUDA device")
    return device
