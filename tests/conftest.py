"""Shared test fixtures: a tiny CW-VAE at the real 64x64 frame size, with Pyro's validation on."""
import functools
import os
import resource
import subprocess
import sys

import pyro
import pytest
import torch

from pyro_cwvae.training.devices import set_deterministic
from pyro_cwvae.model.config import Config
from pyro_cwvae.model.nets import CWVAENets

TINY = dict(levels=2, factor=2, seq_len=8, batch_size=2, z_size=4, h_size=8, embed_size=8, enc_dense_size=16,
            enc_dense_layers=2, steps=4, checkpoint_every=2, workers=0, device="cpu")

# torch reads it at the process's first cuBLAS product: set before any, so that the GPU tests with --deterministic
# pass in any order (a test using CUDA without it would otherwise fix cuBLAS's workspace for the rest)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    return Config(**TINY, run_dir=str(tmp_path / "run")).validate()


@pytest.fixture(autouse=True)
def pyro_state():
    """Validation on (the training loop turns it off), a clean param store and seed, and torch's ordinary kernels
    for every test."""
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    set_deterministic(False)  # fit(deterministic=True) leaves torch's switch on, as a training process wants it


@pytest.fixture
def video() -> torch.Tensor:
    """A (B=2, T=8, C=1, 64, 64) batch in [0, 1]."""
    return torch.rand(2, 8, 1, 64, 64, generator=torch.Generator().manual_seed(0))


def count_gru_steps(nets: CWVAENets) -> list[int]:
    """A counter of the GRU steps ``nets`` takes from now on (its one element, read after the steps)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for level in nets.levels:
        level.transition.gru.register_forward_hook(hook)
    return calls


@functools.cache
def torch_address_space() -> int:
    """Bytes of address space a fresh interpreter holds once it has imported torch and Pyro: about 0.6 GiB with a
    CPU build of torch, 3 GiB or more with a CUDA build, whose libraries are mapped at import."""
    code = ("import torch, pyro\n"
            "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmPeak')))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              check=True).stdout) * 1024


def address_space_limit(headroom: int):
    """A subprocess's ``preexec_fn`` that caps its address space at what importing torch takes plus ``headroom``
    bytes: a limit on what the command itself allocates, whichever build of torch is installed."""
    limit = torch_address_space() + headroom

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limited
