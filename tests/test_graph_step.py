"""The training step of --cuda-graph, run eagerly on a CPU: it equals the step before it bit for bit (losses,
weights, optimizer state), skips a non-finite step inside the step without reading it back, has no host
synchronisation for the packaged programs (nor, with its tensors on another device, a copy from the host), and
names the one of a variant that has."""
import contextlib
import math
import textwrap
import warnings

import pyro
import pytest
import torch

from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import kl_scale
from pyro_cwvae.model import step_sharing
from pyro_cwvae.model.elbo import ElboTerms
from pyro_cwvae.model.programs import load_programs
from pyro_cwvae.training.loop import ElboModule
from pyro_cwvae.training.optim import KerasAdam
from pyro_cwvae.training.step import (WARMUP_STEPS, DeviceScalars, TrainStep, find_host_sync, step_mode, sync_cause,
                                      use_cuda_graph)

STEPS, POISONED, NAN_BATCH = 7, 3, 5  # a step with an infinite gradient, one with a NaN frame (non-finite loss)


def batches(cfg):
    data = GeneratedMovingMNIST()
    for step in range(STEPS):
        batch = torch.as_tensor(data.train_batch(step, cfg.batch_size, cfg.seq_len, cfg.seed)).float().div_(255.0)
        if step == NAN_BATCH:
            batch[0, 0, 0, 0, 0] = float("nan")
        yield batch


def built(cfg, programs):
    """Networks from the seed, with a gradient hook that adds ``poison`` (0 or inf) to one weight's gradient."""
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    nets = programs.make_nets(cfg)
    poison = torch.zeros(())
    next(nets.parameters()).register_hook(lambda grad: grad + poison)
    pyro.set_rng_seed(cfg.seed)
    return nets, poison, ElboModule(nets, programs.model.fn, programs.guide.fn, cfg)


def reference_run(cfg, programs):
    """The step as the loop took it before the step object, from torch's own Adam with the Keras eps set before
    every update (independent of KerasAdam): a non-finite step is skipped (no update, the count not advanced)."""
    nets, poison, elbo = built(cfg, programs)
    beta2, taken, record = 0.999, 0, []
    optimizer = torch.optim.Adam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps, foreach=False)
    for step, video in enumerate(batches(cfg)):
        poison.fill_(math.inf if step == POISONED else 0.0)
        values = elbo(video, kl_scale(step, cfg))
        optimizer.zero_grad(set_to_none=True)
        ElboTerms.unpack(values).objective.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(nets.parameters(), cfg.clip_norm)
        finite = bool(torch.isfinite(values[0]) & torch.isfinite(grad_norm))
        if finite:
            taken += 1
            optimizer.param_groups[0]["eps"] = cfg.adam_eps / math.sqrt(1.0 - beta2 ** taken)
            optimizer.step()
        record.append((torch.cat([values.detach(), grad_norm[None], torch.tensor([float(finite)])]),
                       snapshot(nets, optimizer)))
    return record


def step_run(cfg, programs):
    nets, poison, elbo = built(cfg, programs)
    optimizer = KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    step_fn, record = TrainStep(elbo, optimizer, cfg.clip_norm, warmup_scale=cfg.kl_warmup > 0), []
    for step, video in enumerate(batches(cfg)):
        poison.fill_(math.inf if step == POISONED else 0.0)
        record.append((step_fn(video, kl_scale(step, cfg)).clone(), snapshot(nets, optimizer)))
    return record


def snapshot(nets, optimizer):
    weights = [p.detach().clone() for p in nets.parameters()]
    state = [{key: value.clone() for key, value in optimizer.state[p].items()} for p in nets.parameters()]
    return weights, state


VARIANTS = {"default": {}, "meanfield, shaped KL, warm-up, dropout": dict(
    elbo="meanfield", kl_balance=0.8, free_nats=0.5, kl_beta=[1.0, 0.5], kl_warmup=4, obs_dropout=0.5,
    obs_dropout_span=2)}


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_eager_step_equals_the_step_before_it_bit_for_bit(tiny_cfg, changes):
    cfg = tiny_cfg.replace(lr=3e-3, **changes)
    programs = load_programs(cfg.model, cfg.guide)
    with pyro.validation_enabled(False):  # as the loop trains
        expected, got = reference_run(cfg, programs), step_run(cfg, programs)
    for step, ((values_a, (weights_a, state_a)), (values_b, (weights_b, state_b))) in enumerate(zip(expected, got)):
        assert torch.equal(values_a, values_b) or (step in (POISONED, NAN_BATCH) and torch.equal(
            values_a.isfinite(), values_b.isfinite())), step
        assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b)), step
        for a, b in zip(state_a, state_b):
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key].cpu()) for key in a), step
    flags = [float(values[-1]) for values, _ in got]
    assert flags == [0.0 if step in (POISONED, NAN_BATCH) else 1.0 for step in range(STEPS)]
    assert float(got[-1][1][1][0]["step"]) == STEPS - 2  # two updates skipped


def test_the_step_clips_the_gradient_to_clip_norm_and_reports_its_norm_before(tiny_cfg):
    """With --clip-norm a hundredth of the gradient's norm, Adam's first moment after one step is (1 - beta1) times
    the gradient scaled to that norm, and the step reports the norm before clipping."""
    cfg = tiny_cfg.replace(elbo="meanfield")
    nets, _, elbo = built(cfg, load_programs(cfg.model, cfg.guide))
    video, params = next(batches(cfg)), list(nets.parameters())
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(1)
        grads = torch.autograd.grad(ElboTerms.unpack(elbo(video, 1.0)).objective, params, allow_unused=True)
        norm = torch.stack([g.norm() for g in grads if g is not None]).norm()  # as clip_grad_norm_ sums
        clip = float(norm) / 100
        optimizer = KerasAdam(params, lr=cfg.lr, eps=cfg.adam_eps)
        pyro.set_rng_seed(1)
        out = TrainStep(elbo, optimizer, clip)(video, 1.0)
    torch.testing.assert_close(out[-2], norm)
    beta1 = optimizer.param_groups[0]["betas"][0]
    for param, grad in zip(params, grads):
        if grad is not None:
            torch.testing.assert_close(optimizer.state[param]["exp_avg"], (1 - beta1) * grad * clip / norm,
                                       rtol=1e-5, atol=1e-12)


def test_the_packaged_step_has_no_host_synchronisation(tiny_cfg):
    cfg = tiny_cfg.replace(kl_warmup=4, obs_dropout=0.5, elbo="meanfield", kl_balance=0.8, free_nats=0.5)
    programs = load_programs(cfg.model, cfg.guide)
    nets, _, elbo = built(cfg, programs)
    masked = KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps, masked=True,
                       together=True)  # as on a CUDA device
    step_fn = TrainStep(elbo, masked, cfg.clip_norm, warmup_scale=True)
    step_fn._load(next(batches(cfg)), 0.5)
    with pyro.validation_enabled(False):
        assert find_host_sync(step_fn._step) is None
        assert find_host_sync(step_fn._step) is None  # and with the optimizer state made
        watched = step_fn.out, [p.detach().clone() for p in nets.parameters()]
        nets, _, elbo = built(cfg, programs)  # the same two steps, not watched: the same numbers
        step_fn = TrainStep(elbo, KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps, masked=True),
                            cfg.clip_norm, warmup_scale=True)
        step_fn._load(next(batches(cfg)), 0.5)
        step_fn._step()
        step_fn._step()
    assert torch.equal(watched[0], step_fn.out)
    assert all(torch.equal(a, p) for a, p in zip(watched[1], nets.parameters()))


def test_a_variant_reading_a_value_on_the_host_is_named_with_its_line(tiny_cfg, tmp_path):
    source = (tmp_path / "guide.py")
    packaged = load_programs(None, None).guide.source
    marker = "    embeddings = observational_dropout("
    assert marker in packaged
    source.write_text(packaged.replace(marker, textwrap.indent("if video.mean() > 2.0:\n    video = video / 2\n",
                                                                   "    ") + marker))
    cfg = tiny_cfg.replace(guide=str(source))
    programs = load_programs(cfg.model, cfg.guide)
    nets, _, elbo = built(cfg, programs)
    step_fn = TrainStep(elbo, KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps), cfg.clip_norm)
    step_fn._load(next(batches(cfg)), 1.0)
    with pyro.validation_enabled(False):
        cause = find_host_sync(step_fn._step)
    assert cause is not None and "Python if/while on a tensor" in cause and f"{source}:" in cause
    assert "if video.mean() > 2.0" in cause


def step_on_a_device(cfg, programs, monkeypatch):
    """The training step with its networks and buffers on torch's "meta" device: a device with memory of its own
    (shapes only), so that, on a CPU, a copy between host and device shows up as it would on a GPU."""
    monkeypatch.setattr(step_sharing, "autocast_state", lambda device: None)  # torch has no autocast for meta
    with torch.device("meta"):
        nets = programs.make_nets(cfg)
    elbo = ElboModule(nets, programs.model.fn, programs.guide.fn, cfg)
    optimizer = KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps, masked=True, together=True)
    step_fn = TrainStep(elbo, optimizer, cfg.clip_norm, warmup_scale=cfg.kl_warmup > 0)
    step_fn._load(next(batches(cfg)), 0.5)
    return step_fn


def test_the_packaged_step_copies_nothing_between_host_and_device(tiny_cfg, monkeypatch):
    """As the first warm-up step under the graph is watched: with ``DeviceScalars`` on, every option's step."""
    cfg = tiny_cfg.replace(kl_warmup=4, obs_dropout=0.5, obs_dropout_span=2, elbo="meanfield", kl_balance=0.8,
                           free_nats=0.5, kl_beta=[1.0, 0.5])
    step_fn = step_on_a_device(cfg, load_programs(None, None), monkeypatch)
    with pyro.validation_enabled(False), DeviceScalars(("meta",)):
        assert find_host_sync(step_fn._step) is None
        assert find_host_sync(step_fn._step) is None  # and with the optimizer state made
    assert step_fn.out.device.type == "meta" and step_fn.out.shape == (3 + cfg.levels + 2,)  # terms, norm, flag


@pytest.mark.parametrize("line, cause", [
    ("weights = torch.tensor([0.5, 0.5], device=video.device)", "torch.tensor of host data for the device"),
    ("weights = torch.ones(2).to(video.device)", "a copy from the host"),
    ("weights = torch.as_tensor([0.5, 0.5], device=video.device)", "torch.as_tensor of host data"),
    ("weights = video.new_tensor([0.5, 0.5])", "Tensor.new_tensor of host data")])
def test_a_variant_copying_between_host_and_device_is_named_with_its_line(tiny_cfg, tmp_path, monkeypatch, line,
                                                                        cause):
    source = tmp_path / "guide.py"
    packaged = load_programs(None, None).guide.source
    marker = "    embeddings = observational_dropout("
    source.write_text(packaged.replace(marker, f"    {line}\n{marker}"))
    cfg = tiny_cfg.replace(guide=str(source))
    step_fn = step_on_a_device(cfg, load_programs(cfg.model, cfg.guide), monkeypatch)
    with pyro.validation_enabled(False), DeviceScalars(("meta",)):
        found = find_host_sync(step_fn._step)
    assert found is not None and cause in found and f"{source}:" in found and line in found


def test_cuda_graph_auto_is_off_on_a_cpu_and_on_refuses_what_it_cannot_capture():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_cuda_graph("auto", cpu, "none", 1)
    assert use_cuda_graph("auto", cuda, "none", 1)
    assert not use_cuda_graph("auto", cuda, "default", 1) and not use_cuda_graph("auto", cuda, "none", 2)
    assert not use_cuda_graph("off", cuda, "none", 1)
    for device, compile_mode, processes, named in [(cpu, "none", 1, "CUDA device"), (cuda, "default", 1, "--compile"),
                                                   (cuda, "none", 2, "one process")]:
        with pytest.raises(UserError, match=f"--cuda-graph on needs .*{named}.*--cuda-graph off"):
            use_cuda_graph("on", device, compile_mode, processes)


def test_a_run_on_a_cuda_device_says_how_it_takes_its_steps_and_why_auto_is_eager():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert step_mode("auto", cpu, "none", 1) == "" and step_mode("off", cpu, "none", 1) == ""
    assert step_mode("auto", cuda, "none", 1) == f"steps replayed as a CUDA graph after {WARMUP_STEPS} eager ones"
    assert step_mode("off", cuda, "none", 1) == "eager steps (--cuda-graph off)"
    assert step_mode("auto", cuda, "none", 4) == ("eager steps: a CUDA graph needs one process, not 4 "
                                                  "(DistributedDataParallel's hooks are not captured)")
    assert step_mode("auto", cuda, "default", 1).startswith("eager steps: a CUDA graph needs --compile none")


def test_a_batch_of_another_shape_is_refused(tiny_cfg):
    programs = load_programs(None, None)
    nets, _, elbo = built(tiny_cfg, programs)
    step_fn = TrainStep(elbo, KerasAdam(nets.parameters()), tiny_cfg.clip_norm)
    video = next(batches(tiny_cfg))
    with pyro.validation_enabled(False):
        step_fn(video, 1.0)
        with pytest.raises(UserError, match="one shape"):
            step_fn(video[:1], 1.0)


def test_cuda_graph_setting_is_checked_and_changeable_on_resume(tiny_cfg):
    from pyro_cwvae.training.run_config import CHANGEABLE_ON_RESUME

    with pytest.raises(UserError, match="--cuda-graph must be one of auto, on, off, got 'sometimes'"):
        tiny_cfg.replace(cuda_graph="sometimes").validate()
    assert tiny_cfg.cuda_graph == "auto" and "cuda_graph" in CHANGEABLE_ON_RESUME


def test_cuda_graph_on_is_refused_on_a_cpu_in_one_line(tiny_cfg):
    from pyro_cwvae.training.loop import fit

    with pytest.raises(UserError, match="^--cuda-graph on needs a CUDA device, not cpu: use --cuda-graph off$"):
        fit(tiny_cfg.replace(cuda_graph="on"), GeneratedMovingMNIST(), progress=False)


def test_what_waits_for_the_device_or_copies_from_the_host_is_named():
    aten, cpu = torch.ops.aten, torch.zeros(3)
    assert "host" in sync_cause(aten._to_copy.default, (cpu,), {"device": torch.device("cuda")})
    assert sync_cause(aten._to_copy.default, (cpu,), {"dtype": torch.float64}) is None
    assert "boolean mask" in sync_cause(aten.index.Tensor, (cpu, [cpu > 0]), {})
    assert "data-dependent" in sync_cause(aten.repeat_interleave.self_Tensor, (cpu, cpu.long()), {})
    assert sync_cause(aten.repeat_interleave.self_int, (cpu, 2), {}) is None
    assert ".item()" in sync_cause(aten._local_scalar_dense.default, (cpu,), {})


def test_device_scalars_make_python_numbers_on_the_device_with_the_same_values(tiny_cfg, monkeypatch):
    """Under the graph, a distribution given a Python number (the model's Normal(frames, dec_std)) gets it from
    torch.full on the device, not from a copy: the step is the same bit for bit (here on a CPU, told to do so)."""
    full, filled = torch.full, []
    monkeypatch.setattr(torch, "full", lambda *args, **kwargs: filled.append(args[1]) or full(*args, **kwargs))
    with DeviceScalars(("cpu",)):
        made = (torch.tensor(0.1, dtype=torch.float32, device="cpu"), torch.as_tensor(3, device="cpu"),
                torch.zeros((), dtype=torch.float64).new_tensor(0.25))
        torch.distributions.Normal(torch.zeros(2), 0.5)
    assert filled == [0.1, 3, 0.25, 0.5] and made[0].item() == torch.tensor(0.1).item()
    assert made[1].dtype == torch.int64 and made[2].dtype == torch.float64  # new_tensor: the dtype of its tensor
    monkeypatch.undo()
    programs = load_programs(None, None)
    results = []
    for mode in (None, DeviceScalars(("cpu",))):
        nets, _, elbo = built(tiny_cfg, programs)
        step_fn = TrainStep(elbo, KerasAdam(nets.parameters()), tiny_cfg.clip_norm)
        with pyro.validation_enabled(False), (mode or contextlib.nullcontext()):
            results.append((step_fn(next(batches(tiny_cfg)), 1.0), [p.detach().clone() for p in nets.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


class Quadratic(torch.nn.Module):
    """A stand-in for the ELBO module: loss = |w|^2 + max(video), packed as ``ElboTerms.pack`` (loss,
    reconstruction, objective, one KL). Its gradient is 2w whatever the video, so a frame of +inf makes the loss
    infinite while the gradient stays finite."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))

    def forward(self, video, scale):
        loss = (self.w ** 2).sum() + video.amax()
        return torch.stack([loss, loss, loss, torch.zeros(())])


def quadratic_step(**kwargs):
    module = Quadratic()
    return module, TrainStep(module, KerasAdam(module.parameters(), lr=0.1), clip_norm=100.0, **kwargs)


def test_a_step_with_an_infinite_loss_and_a_finite_gradient_is_skipped():
    module, step_fn = quadratic_step()
    video = torch.zeros(1, 2, 1, 4, 4)
    video[0, 0, 0, 0, 0] = math.inf
    out = step_fn(video, 1.0)
    assert math.isinf(out[0]) and math.isfinite(out[-2]) and out[-1] == 0.0
    assert torch.equal(module.w.detach(), torch.tensor([1.0, -2.0]))
    out = step_fn(torch.zeros(1, 2, 1, 4, 4), 1.0)  # a finite one is taken
    assert out[-1] == 1.0 and not torch.equal(module.w.detach(), torch.tensor([1.0, -2.0]))


def test_a_step_another_process_found_non_finite_is_skipped_here_too():
    """The finite flag goes through ``reduce_ok`` (under DDP: a collective) before the optimizer reads it."""
    module, step_fn = quadratic_step(reduce_ok=lambda ok: torch.zeros_like(ok))
    out = step_fn(torch.zeros(1, 2, 1, 4, 4), 1.0)
    assert out[-1] == 0.0 and torch.equal(module.w.detach(), torch.tensor([1.0, -2.0]))


def test_device_scalars_keep_the_dtype_new_tensor_is_given_and_leave_other_devices_alone(monkeypatch):
    like = torch.zeros((), dtype=torch.float64)
    with DeviceScalars(("cpu",)):
        assert like.new_tensor(0.25, dtype=torch.float32).dtype == torch.float32  # as torch makes it
    full, filled = torch.full, []
    monkeypatch.setattr(torch, "full", lambda *args, **kwargs: filled.append(args[1]) or full(*args, **kwargs))
    with DeviceScalars():  # CUDA only: a CPU number is made the ordinary way
        torch.tensor(0.5, device="cpu")
    assert filled == []


@pytest.mark.parametrize("make", [lambda: torch.tensor(True, device="meta"),
                                  lambda: torch.tensor(0.5, device="meta", requires_grad=True),
                                  lambda: torch.as_tensor(torch.zeros(2, device="meta"), device="meta")],
                         ids=["a bool", "requires_grad", "a device tensor"])
def test_no_copy_from_the_host_is_reported_where_none_is_made(make):
    with DeviceScalars(("meta",)):
        assert find_host_sync(make) is None


@pytest.mark.parametrize("op, cause", [
    (lambda x: x.nonzero(), "nonzero"),
    (lambda x: x.masked_select(x > 0), "masked_select"),
    (lambda x: x.unique(), "unique"),
    (lambda x: x.unique_consecutive(), "unique_consecutive"),
    (lambda x: torch.equal(x, x), "torch.equal"),
    (lambda x: x[(x > 0).to(torch.uint8)], "boolean mask"),
    (lambda x: x.repeat_interleave(torch.ones(3, dtype=torch.long)), "repeat_interleave"),
    (lambda x: torch.repeat_interleave(torch.ones(3, dtype=torch.long)), "repeat_interleave"),
])
def test_each_operation_that_waits_for_the_device_is_named_from_a_real_call(op, cause):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # indexing with a uint8 mask is deprecated
        found = find_host_sync(lambda: op(torch.arange(3.0)))
    assert found is not None and cause in found


def test_repeat_interleave_with_its_output_size_given_waits_for_nothing():
    """torch's documented way of a repeat_interleave without a host read."""
    repeats = torch.ones(3, dtype=torch.long)
    assert find_host_sync(lambda: torch.arange(3.0).repeat_interleave(repeats, output_size=3)) is None


def test_copies_between_host_and_device_are_named_both_ways():
    """On torch's meta device, a device of its own."""
    meta, cpu = torch.zeros(3, device="meta"), torch.zeros(3)
    assert "to the host" in sync_cause(torch.ops.aten._to_copy.default, (meta,), {"device": torch.device("cpu")})
    assert "from the host" in find_host_sync(lambda: torch.empty(3, device="meta").copy_(cpu))


def test_a_host_read_inside_eval_is_named_at_the_programs_line(tiny_cfg, tmp_path):
    """Code without a file of its own (eval, "<string>") is no place to name."""
    source = tmp_path / "guide.py"
    marker = "    embeddings = observational_dropout("
    source.write_text(load_programs(None, None).guide.source.replace(
        marker, '    eval("video.mean().item()")\n' + marker))
    cfg = tiny_cfg.replace(guide=str(source))
    nets, _, elbo = built(cfg, load_programs(cfg.model, cfg.guide))
    step_fn = TrainStep(elbo, KerasAdam(nets.parameters(), masked=True), cfg.clip_norm)
    step_fn._load(next(batches(cfg)), 1.0)
    with pyro.validation_enabled(False):
        cause = find_host_sync(step_fn._step)
    assert cause is not None and f"{source}:" in cause and 'eval("video.mean().item()")' in cause
