"""The device a command runs on (``resolve_device``), whether its kernels are deterministic, and optional
accelerations for GPUs: lower-precision arithmetic and torch.compile of the networks.

Both change the numerics, so both are off by default (``--precision fp32 --compile none``):

- ``--precision tf32``: float32 matrix products on TensorFloat-32 tensor cores (CUDA only; convolutions
  already use them by PyTorch's default).
- ``--precision bf16``: the networks under ``torch.autocast`` to bfloat16. Distribution parameters, GRU states
  and decoded frames are cast back to float32 (nets.py), so log-densities, KLs and the recurrent state
  accumulate in float32.
- ``--compile default | max-autotune``: ``torch.compile`` (Inductor) of the encoder, decoder and each level's
  GRU step and heads: fewer, fused kernels per latent step. The Pyro programs themselves stay plain Python.
  Inductor's own CUDA graphs are not used (not even by ``max-autotune``, whose torch mode would switch them on):
  one training step replays the per-step cell hundreds of times while keeping every output alive for the backward
  pass, which a per-cell graph replay would overwrite. ``--cuda-graph`` (step.py) captures the whole step instead,
  and is off with ``--compile``.

``--deterministic`` is about reproducibility, not speed: cuDNN's and cuBLAS's fastest kernels may sum in a
different order from one call to the next, so two GPU runs from the same seed (or a resumed run and an
uninterrupted one) drift apart by rounding, and Adam's first steps magnify the drift. Deterministic kernels
make them equal bit for bit; CPU kernels are deterministic already.
"""
from __future__ import annotations

import contextlib
import os

import torch

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.nets import CWVAENets


def set_matmul_precision(precision: str, device: torch.device) -> None:
    """Allow TF32 matrix products for ``tf32``; refuse it where there is no tensor core to use it."""
    if precision == "tf32" and device.type != "cuda":
        raise UserError("--precision tf32 needs a CUDA device (on a CPU it would change nothing)")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def autocast(precision: str, device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
    """The context the networks run in: bfloat16 autocast for ``bf16``, nothing otherwise. ``cache``: reuse the
    casts of the weights within the context (not under a CUDA graph's capture, which torch does not support)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
FIXED_WORKSPACES = (":4096:8", ":16:8")  # the cuBLAS workspaces under which its products sum in a fixed order


def set_deterministic(deterministic: bool, device: torch.device | None = None) -> None:
    """Use only deterministic kernels for ``--deterministic`` (an op without one raises), any kernel otherwise;
    on a CUDA ``device``, refuse in one line a process whose cuBLAS cannot be deterministic any more."""
    if deterministic:
        os.environ.setdefault(CUBLAS_WORKSPACE, FIXED_WORKSPACES[0])
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    if deterministic and device is not None and device.type == "cuda":
        check_cublas_workspace(device)


def check_cublas_workspace(device: torch.device) -> None:
    """torch reads CUBLAS_WORKSPACE_CONFIG once, at the process's first cuBLAS product: set after one (by
    ``set_deterministic``, in a process that used CUDA before), it is ignored, and every product under
    deterministic mode would raise deep in the training step."""
    value = os.environ[CUBLAS_WORKSPACE]
    if value not in FIXED_WORKSPACES:
        raise UserError(f"--deterministic needs {CUBLAS_WORKSPACE}={FIXED_WORKSPACES[0]} (or {FIXED_WORKSPACES[1]}), "
                        f"not {value!r}: cuBLAS sums in a fixed order only with a fixed workspace")
    if not torch.cuda.is_initialized():
        return  # no product yet: torch will read the value above
    try:
        torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except RuntimeError as error:
        if CUBLAS_WORKSPACE not in str(error):
            raise
        raise UserError(f"--deterministic: this process ran a CUDA matrix product before {CUBLAS_WORKSPACE} was "
                        f"set, and torch reads it once; set {CUBLAS_WORKSPACE}={FIXED_WORKSPACES[0]} in the "
                        "environment before starting Python") from None


def inductor_options(mode: str) -> dict:
    """Inductor's options for ``--compile mode``: torch's mode without CUDA graphs (see above), and without the
    switch of convolutions to channels-last, under which torch 2.11 predicts channels-last strides for the
    encoder's input gradient that cuDNN returns contiguous, and fails its own stride check at batch 50 x 100."""
    import torch._inductor  # here, not above: importing it takes a second that most commands need not pay

    torch_mode = {"default": "default", "max-autotune": "max-autotune-no-cudagraphs"}[mode]
    return {**torch._inductor.list_mode_options(torch_mode), "layout_optimization": False}


def compile_nets(nets: CWVAENets, mode: str) -> None:
    """Compile the networks' forward passes in place (parameter names, and so checkpoints, are unchanged)."""
    if mode == "none":
        return
    options = inductor_options(mode)
    modules = [nets.encoder.conv, *nets.encoder.stacks, nets.decoder]
    for level in nets.levels:
        # the transition's forward is the prior head, compiled for one step's rows (so not batched by step_sharing.py,
        # whose batches of several shapes would recompile it); its GRU step (inp, gru) is shared as it is
        modules += [level.transition, level.transition.inp, level.transition.gru, level.posterior]
    for module in modules:
        module.forward = torch.compile(module.forward, options=options, dynamic=False)


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
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise UserError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device
