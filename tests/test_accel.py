"""The optional accelerations: bf16 autocast keeps the ELBO close and in float32; torch.compile changes nothing;
--deterministic switches torch's kernels."""
import os

import pyro
import pytest
import torch

from pyro_cwvae.errors import UserError
from pyro_cwvae.training.devices import (autocast, check_cublas_workspace, compile_nets, inductor_options, resolve_device,
                                         set_deterministic, set_matmul_precision)
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.training.loop import fit

CPU = torch.device("cpu")


def terms_and_grads(nets, cfg, video, precision="fp32"):
    pyro.set_rng_seed(3)
    with autocast(precision, CPU):
        terms = elbo_terms(model, guide, video, nets, cfg)
    return terms, torch.autograd.grad(terms.loss, list(nets.parameters()))


def test_bf16_autocast_keeps_the_terms_in_float32_and_close(tiny_cfg, video):
    nets = CWVAENets(tiny_cfg)
    exact, exact_grads = terms_and_grads(nets, tiny_cfg, video)
    low, low_grads = terms_and_grads(nets, tiny_cfg, video, "bf16")
    assert low.loss.dtype == low.kl.dtype == torch.float32
    assert not torch.equal(low.loss, exact.loss)  # bfloat16 did run
    torch.testing.assert_close(low.reconstruction, exact.reconstruction, rtol=1e-3, atol=0)
    torch.testing.assert_close(low.kl, exact.kl, rtol=0.05, atol=0.01)
    cosines = [torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0)
               for a, b in zip(low_grads, exact_grads)]
    assert min(cosines) > 0.8  # per tensor: about 0.94 typically, a broken cast gives ~0 or NaN


def test_compiled_networks_give_the_same_elbo_and_gradients(tiny_cfg, video):
    """Inductor on the CPU (tens of seconds to compile): fused kernels, the same numbers to float precision."""
    nets = CWVAENets(tiny_cfg)
    exact, exact_grads = terms_and_grads(nets, tiny_cfg, video)
    compile_nets(nets, "default")
    compiled, grads = terms_and_grads(nets, tiny_cfg, video)
    torch.testing.assert_close(compiled.loss, exact.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(compiled.kl, exact.kl, rtol=1e-4, atol=1e-6)
    for a, b in zip(grads, exact_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert set(nets.state_dict()) == set(CWVAENets(tiny_cfg).state_dict())  # checkpoints are unchanged


def test_inductor_options_leave_cuda_graphs_and_the_channels_last_switch_off():
    for mode in ("default", "max-autotune"):
        options = inductor_options(mode)
        assert not options.get("triton.cudagraphs") and options["layout_optimization"] is False
    assert inductor_options("max-autotune")["max_autotune"] and not inductor_options("default").get("max_autotune")


def test_deterministic_switches_torch_to_deterministic_kernels_and_back(tiny_cfg):
    data = GeneratedMovingMNIST()
    fit(tiny_cfg.replace(steps=2, deterministic=True), data, progress=False)  # raises if an op has no such kernel
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    fit(tiny_cfg.replace(steps=3), data, resume=True, progress=False)  # a resume may change it
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_deterministic_on_cuda_refuses_a_workspace_cublas_cannot_sum_in_order_by(monkeypatch):
    """torch reads CUBLAS_WORKSPACE_CONFIG once; a value that is not one of cuBLAS's fixed workspaces would make every
    product of the step raise. A process that has not started CUDA is not probed (here it cannot be: no CUDA)."""
    cuda = torch.device("cuda")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    with pytest.raises(UserError, match="needs CUBLAS_WORKSPACE_CONFIG=:4096:8 .*not ':0:0'"):
        set_deterministic(True, cuda)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    set_deterministic(True, cuda)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_devices_are_named_or_refused_in_one_line(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    for name, message in [("gpu", "is not a device"), ("cuda:1", "sees no CUDA device")]:
        with pytest.raises(UserError, match=message):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU, as torch sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="sees 1 CUDA device"):
        resolve_device("cuda:1")


def test_auto_picks_cuda_where_torch_sees_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_precisions_other_than_tf32_switch_tf32_products_off():
    """A resumed run may change --precision: fp32 and bf16 leave TF32 off."""
    before = torch.backends.cuda.matmul.allow_tf32  # torch's switch, not an attribute monkeypatch can restore
    try:
        for precision in ("fp32", "bf16"):
            torch.backends.cuda.matmul.allow_tf32 = True
            set_matmul_precision(precision, CPU)
            assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_bf16_autocast_runs_in_bfloat16_and_passes_its_cache_setting():
    linear = torch.nn.Linear(3, 2)
    for cache in (True, False):
        with autocast("bf16", CPU, cache=cache):
            assert linear(torch.ones(1, 3)).dtype == torch.bfloat16
            assert torch.is_autocast_cache_enabled() is cache


def test_the_cublas_workspace_is_checked_only_for_deterministic_runs_and_both_fixed_ones_pass(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    set_deterministic(False, cuda)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # cuBLAS documents both
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    set_deterministic(True, cuda)


class Raising:
    def __init__(self, message):
        self.message = message

    def __matmul__(self, other):
        raise RuntimeError(self.message)


def test_the_cublas_probe_turns_only_the_workspace_error_into_one_line(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    message = ("... it uses CuBLAS and you have CUDA >= 10.2. To enable deterministic behavior in this case, you must "
               "set an environment variable before running your PyTorch application: CUBLAS_WORKSPACE_CONFIG=:4096:8 "
               "or CUBLAS_WORKSPACE_CONFIG=:16:8.")  # torch's words
    monkeypatch.setattr(torch, "ones", lambda *args, **kwargs: Raising(message))
    with pytest.raises(UserError, match="before CUBLAS_WORKSPACE_CONFIG was set"):
        check_cublas_workspace(torch.device("cuda"))
    monkeypatch.setattr(torch, "ones", lambda *args, **kwargs: Raising("CUDA error: out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        check_cublas_workspace(torch.device("cuda"))


def test_compile_gives_every_network_the_options_without_cuda_graphs(tiny_cfg, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append((fn.__self__, kwargs)) or fn)
    nets = CWVAENets(tiny_cfg)
    compile_nets(nets, "max-autotune")
    compiled = {id(module) for module, _ in calls}
    for level in nets.levels:
        assert {id(level.posterior), id(level.transition), id(level.transition.gru)} <= compiled
    for _, kwargs in calls:
        assert kwargs["dynamic"] is False
        assert kwargs["options"]["max_autotune"] and not kwargs["options"].get("triton.cudagraphs")
        assert kwargs["options"]["layout_optimization"] is False
