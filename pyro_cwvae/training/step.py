"""One training step as an object with static buffers, so that a GPU can replay it whole as a CUDA graph.

A step of the CW-VAE launches thousands of small kernels (the GRU, heads and KL of 100 + 17 + 3 cell steps, their
backward pass, the optimizer), one after another from Python: on a GPU the device waits on the host. ``TrainStep``
holds everything a step reads and writes in tensors that live as long as it does:

- inputs: the batch as float video (B, T, C, 64, 64) and, under ``--kl-warmup``, the KL scale as a 0-dim tensor;
- outputs: the packed ELBO terms (``ElboTerms.pack``), the gradient norm and a finite flag, in one tensor.

A step (``_step``) runs the guide and model traces through the ELBO module, back-propagates, clips the global
gradient norm and takes the Keras Adam step, and never reads a value back to the host: whether the loss and the
gradient norm are finite is a device tensor, and the optimizer applies the update only where it holds (as AMP's
gradient scaler skips a step), so a non-finite step leaves the weights and the optimizer state exactly as they were.
The loop reads the flag later, with the logged values (``loop.StepLog``), and applies ``--max-bad-steps`` there.

With ``--cuda-graph`` on (the default on CUDA devices), the first ``WARMUP_STEPS`` steps run eagerly on a side
stream, the first of them watched for host synchronisations (``find_host_sync``); the next call captures one whole
step with ``torch.cuda.graph`` and every call from then on copies its batch into the static input and replays the
graph. Elsewhere the same ``_step`` runs eagerly. While the programs' Python runs under the graph (the warm-up steps
and the capture), ``DeviceScalars`` makes a tensor of a Python number on the device without a copy from the host
(``torch.distributions`` makes one of every number it is given, like the packaged model's ``Normal(frames,
cfg.dec_std)``; a synchronous copy cannot be captured), so the programs stay as they are. A program that cannot be
captured (a host synchronisation: an ``.item()``, a Python branch on a tensor value, a data-dependent shape, a
tensor made from host data on the device) stops the run with one line naming the cause, its line of code, and
``--cuda-graph off``.
"""
from __future__ import annotations

import sysconfig
import traceback
from pathlib import Path
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.elbo import ElboTerms

WARMUP_STEPS = 3  # eager steps on a side stream before the capture, as torch's documentation does


def use_cuda_graph(mode: str, device: torch.device, compile_mode: str, processes: int) -> bool:
    """Whether ``--cuda-graph mode`` captures the step: ``auto`` where it can (a CUDA device, no ``--compile``, one
    process); ``on`` refuses the settings it cannot work with, each in one line."""
    if mode == "off":
        return False
    needs = graph_needs(device, compile_mode, processes)
    if needs and mode == "on":
        raise UserError(f"--cuda-graph on needs {needs}: use --cuda-graph off")
    return needs is None


def graph_needs(device: torch.device, compile_mode: str, processes: int) -> str | None:
    """What the settings lack for a captured step, or None."""
    blockers = [(device.type != "cuda", f"a CUDA device, not {device.type}"),
                (compile_mode != "none", f"--compile none, not {compile_mode} (compiled networks are not captured)"),
                (processes > 1, f"one process, not {processes} (DistributedDataParallel's hooks are not captured)")]
    return next((needs for blocked, needs in blockers if blocked), None)


def step_mode(mode: str, device: torch.device, compile_mode: str, processes: int) -> str:
    """How a CUDA device takes the training steps, for the line a run starts with ("" on other devices): so that
    ``auto`` falling back to eager steps says why."""
    if device.type != "cuda":
        return ""
    if use_cuda_graph(mode, device, compile_mode, processes):
        return f"steps replayed as a CUDA graph after {WARMUP_STEPS} eager ones"
    if mode == "off":
        return "eager steps (--cuda-graph off)"
    return f"eager steps: a CUDA graph needs {graph_needs(device, compile_mode, processes)}"


class TrainStep:
    """A training step of ``elbo`` (``loop.ElboModule``, or it wrapped in DistributedDataParallel) with static
    inputs and outputs; ``graph`` captures and replays it on CUDA (see the module docstring).

    ``reduce_ok``, when several processes train together, makes the finite flag agree across them (a collective
    on the device, no host read). ``warmup_scale``: whether the KL scale varies (``--kl-warmup``); without it the
    programs get the constant 1.0, as a Python number.
    """

    def __init__(self, elbo: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_norm: float, *,
                 graph: bool = False, warmup_scale: bool = False,
                 reduce_ok: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.elbo, self.optimizer, self.clip_norm, self.graph = elbo, optimizer, clip_norm, graph
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.warmup_scale, self.reduce_ok = warmup_scale, reduce_ok
        self.video: torch.Tensor | None = None  # static inputs, made at the first call
        self.scale: torch.Tensor | None = None
        self.out: torch.Tensor | None = None  # static output: terms, gradient norm, finite flag
        self.calls, self.cuda_graph, self.side_stream = 0, None, None

    def __call__(self, batch: torch.Tensor, scale: float) -> torch.Tensor:
        """Train on ``batch`` (B, T, C, 64, 64: bytes 0..255, or floats in [0, 1]) with KL scale ``scale``; returns
        the step's values (``ElboTerms.pack``, gradient norm, finite flag 1/0), still on the device."""
        self._load(batch, scale)
        if not self.graph:
            self._step()
            return self.out
        with torch.cuda.device(self.video.device):  # a capture and its replays use the current device's streams
            if self.calls < WARMUP_STEPS:
                self._warm_up(watch=self.calls == 0)
            elif self.cuda_graph is None:
                self._capture()
                self.cuda_graph.replay()
            else:
                self.cuda_graph.replay()
        self.calls += 1
        return self.out.clone()  # the next replay overwrites ``out``

    def _load(self, batch: torch.Tensor, scale: float) -> None:
        """Copy the batch and the KL scale into the static inputs (made at the first call)."""
        if self.video is None:
            device = self.params[0].device
            self.video = torch.empty(batch.shape, dtype=torch.float32, device=device)
            self.scale = torch.ones((), dtype=torch.float32, device=device) if self.warmup_scale else None
        if batch.shape != self.video.shape:
            raise UserError(f"a training step got a batch of shape {tuple(batch.shape)} after "
                            f"{tuple(self.video.shape)}: the step's buffers have one shape")
        # as bytes to the device, then converted there (a copy_ across devices would convert on the host, into
        # unpinned memory, four times the bytes)
        self.video.copy_(batch.to(self.video.device, non_blocking=True))
        if batch.dtype == torch.uint8:
            self.video.div_(255.0)
        if self.scale is not None:
            self.scale.fill_(scale)

    def _step(self) -> None:
        """One step on the static inputs, into ``out``; no value is read back to the host."""
        self.optimizer.zero_grad(set_to_none=True)
        values = self.elbo(self.video, self.scale if self.scale is not None else 1.0)
        ElboTerms.unpack(values).objective.backward()  # the loss, or its KL-shaped version
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        ok = torch.isfinite(values[0]) & torch.isfinite(grad_norm)
        if self.reduce_ok is not None:
            ok = self.reduce_ok(ok)
        self.optimizer.step(ok=ok)
        self.out = torch.cat([values.detach(), grad_norm.detach()[None], ok[None].to(values.dtype)])

    def _warm_up(self, watch: bool) -> None:
        """An eager step on a side stream (cuBLAS and cuDNN set up their work space outside the capture)."""
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream(self.video.device)
        self.side_stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(self.side_stream), DeviceScalars():
                cause = find_host_sync(self._step) if watch else self._step()
        finally:  # a refused step too: its kernels may still run when the run unwinds and frees their memory
            torch.cuda.current_stream().wait_stream(self.side_stream)
        if cause:
            raise not_captured(cause)

    def _capture(self) -> None:
        """Capture ``_step`` in a CUDA graph; one line naming the cause and ``--cuda-graph off`` if it fails."""
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients in the graph
        graph = torch.cuda.CUDAGraph()
        failed: list[BaseException] = []  # what stopped the step: ending a broken capture raises an error of its own
        try:
            # thread_local: the data loader's pin-memory thread may allocate while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"), DeviceScalars():
                try:
                    self._step()
                except BaseException as error:
                    failed.append(error)
                    raise
        except (RuntimeError, UserError) as error:
            cause = failed[0] if failed else error
            if not isinstance(cause, (RuntimeError, UserError)):
                raise cause from None  # the step's own error (a Ctrl-C, a variant's TypeError), not a capture's
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise not_captured(first) from cause
        self.cuda_graph = graph


def not_captured(cause: str) -> UserError:
    return UserError(f"--cuda-graph: the training step cannot be captured: {cause}; train with --cuda-graph off")


class DeviceScalars(TorchFunctionMode):
    """``torch.tensor(x)``, ``torch.as_tensor(x)`` or ``t.new_tensor(x)`` of a Python number for a device of
    ``device_types`` made there by ``torch.full`` (the same value, no copy from the host), for code run under a
    CUDA graph's capture."""

    def __init__(self, device_types: tuple[str, ...] = ("cuda",)):
        super().__init__()
        self.device_types = device_types

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        made = factory_call(func, args, kwargs)
        if made is not None and device_scalar(func, made, kwargs) and made[1].type in self.device_types:
            return torch.full((), made[0], **made[2])
        return func(*args, **kwargs)


def factory_call(func, args, kwargs) -> tuple | None:
    """For ``torch.tensor``, ``torch.as_tensor``, ``torch.asarray`` and ``Tensor.new_tensor`` (which make a tensor
    of data, copying it to the device below the dispatcher): its data, the device it goes to (None: the host, or
    the data's own) and the options of the tensor; None for any other function."""
    if func is torch.Tensor.new_tensor and len(args) == 2:
        like = args[0]
        options = {"dtype": like.dtype, "device": like.device, **kwargs}
        return args[1], torch.device(options["device"]), options
    if func in (torch.tensor, torch.as_tensor, torch.asarray) and len(args) == 1:
        device = kwargs.get("device")
        return args[0], None if device is None else torch.device(device), kwargs
    return None


def device_scalar(func, made: tuple, kwargs) -> bool:
    """Whether the ``factory_call`` ``made`` makes a tensor of one Python number for a given device: what
    ``DeviceScalars`` makes on the device."""
    data, device, _ = made
    return (func is not torch.asarray and type(data) in (int, float, bool) and device is not None
            and set(kwargs) <= {"dtype", "device", "requires_grad"})


def host_data_cause(func, args, kwargs) -> str | None:
    """The copy from the host that ``torch.tensor`` and its kin make of host data (a list, an array, a host tensor)
    for another device: torch makes it below the dispatcher, where ``HostSyncFinder`` does not see it. None for a
    Python number, which ``DeviceScalars`` makes on the device."""
    made = factory_call(func, args, kwargs)
    if made is None or device_scalar(func, made, kwargs):
        return None
    data, device, _ = made
    if device is None or device.type == "cpu" or (isinstance(data, torch.Tensor) and data.device.type != "cpu"):
        return None
    name = "Tensor.new_tensor" if func is torch.Tensor.new_tensor else f"torch.{func.__name__}"
    return (f"{name} of host data for the device, a copy from the host (make the tensor on the device, e.g. with "
            "torch.full or torch.arange, or once outside the step)")


SYNCS = {
    "aten::_local_scalar_dense": "a tensor value read on the host (.item(), float(), int(), or a Python if/while "
                                 "on a tensor)",
    "aten::is_nonzero": "a Python if/while on a tensor",
    "aten::equal": "torch.equal (a value read on the host)",
    "aten::nonzero": "nonzero (a data-dependent shape)",
    "aten::masked_select": "masked_select (a data-dependent shape)",
    "aten::_unique2": "unique (a data-dependent shape)",
    "aten::unique_dim": "unique (a data-dependent shape)",
    "aten::unique_consecutive": "unique_consecutive (a data-dependent shape)",
}


def sync_cause(func, args, kwargs) -> str | None:
    """What makes the aten call ``func(*args, **kwargs)`` wait for the device, or None."""
    name = func._schema.name
    if name in SYNCS:
        return SYNCS[name]
    # x.repeat_interleave(t) reaches the dispatcher as the .Tensor overload of t alone, then an index_select
    if name == "aten::repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") \
            and kwargs.get("output_size") is None:
        return "repeat_interleave with tensor repeats (a data-dependent shape)"
    if name in ("aten::index", "aten::index_put", "aten::index_put_") and len(args) > 1 and any(
            isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in args[1] or ()):
        return "indexing with a boolean mask (a data-dependent shape)"
    if name in ("aten::_to_copy", "aten::copy_"):
        source = args[1] if name == "aten::copy_" else args[0]
        target = args[0].device if name == "aten::copy_" else kwargs.get("device") or source.device
        if isinstance(source, torch.Tensor) and source.device.type != "cpu" and torch.device(target).type == "cpu":
            return "a copy to the host (.cpu(), .tolist(), .numpy())"
        if isinstance(source, torch.Tensor) and source.device.type == "cpu" and torch.device(target).type != "cpu":
            return "a copy from the host (torch.tensor(...) of a list or array, .to(device), .cuda())"
    return None


LIBRARIES = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                                    sysconfig.get_paths()["platlib"]})


def caller() -> str:
    """The innermost frame of the stack outside Python's and the installed libraries' files (torch, Pyro) and
    outside this module: where a program asked for what ``sync_cause`` found."""
    for frame in reversed(traceback.extract_stack()):
        path = str(Path(frame.filename).resolve())
        if path != str(Path(__file__).resolve()) and not path.startswith(LIBRARIES) and "<" not in frame.filename:
            line = f" ({frame.line.strip()})" if frame.line else ""
            return f"{frame.filename}:{frame.lineno}{line}"
    return "unknown place"


class HostSyncFinder(TorchDispatchMode):
    """Records the first operation that would make the host wait for the device (see ``sync_cause``)."""

    def __init__(self):
        super().__init__()
        self.found: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.found is None:
            cause = sync_cause(func, args, kwargs)
            if cause:
                self.found = f"{cause} at {caller()}"
        return func(*args, **kwargs)


class HostDataFinder(TorchFunctionMode):
    """Records, into ``finder``, the first tensor made on a device from host data (see ``host_data_cause``)."""

    def __init__(self, finder: HostSyncFinder):
        super().__init__()
        self.finder = finder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.finder.found is None:
            cause = host_data_cause(func, args, kwargs)
            if cause:
                self.finder.found = f"{cause} at {caller()}"
        return func(*args, **kwargs)


def find_host_sync(step: Callable[[], None]) -> str | None:
    """Run ``step`` once (it takes effect) and describe its first host synchronisation, or None if it has none.
    Works on a CPU as well, where every read is cheap but still shows up; copies between host and device show up
    where the tensors live on another device (tests use torch's "meta" device for one)."""
    finder = HostSyncFinder()
    with finder, HostDataFinder(finder):
        step()
    return finder.found

