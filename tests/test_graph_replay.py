"""The CUDA-graph path of the training step (``TrainStep(graph=True)``) on a CPU, with torch's CUDA streams and
graphs replaced by fakes that record what the step asks of them: eager warm-ups, one capture, then replays, each
returning a copy of the static output; a refused warm-up still makes the run wait for its kernels; a step that
fails under the capture is named by its own error. Whether the replayed kernels compute what the eager step does
only a GPU can show (tests/test_gpu.py)."""
import contextlib

import pyro
import pytest
import torch

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.programs import load_programs
from pyro_cwvae.training.optim import KerasAdam
from pyro_cwvae.training.step import WARMUP_STEPS, TrainStep
from tests.test_graph_step import batches, built


class FakeCuda:
    """torch.cuda's streams and graphs as ``TrainStep`` uses them: the steps run eagerly, the streams record what
    waited on what, the graph counts captures and replays, and ending a capture that an error broke raises an error
    of its own, as ``torch.cuda.graph`` does (the capture is invalidated)."""

    def __init__(self, monkeypatch):
        self.waits, self.captures, self.replays = [], 0, 0
        monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream("side stream", self.waits))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: FakeStream("main stream", self.waits))
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: FakeGraph(self))
        monkeypatch.setattr(torch.cuda, "graph", self.graph)

    @contextlib.contextmanager
    def graph(self, cuda_graph, capture_error_mode):
        self.captures += 1
        try:
            yield
        except BaseException:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


class FakeGraph:
    def __init__(self, cuda: FakeCuda):
        self.cuda = cuda

    def replay(self):
        self.cuda.replays += 1


class FakeStream(str):
    def __new__(cls, name, waits):
        stream = super().__new__(cls, name)
        stream.waits = waits
        return stream

    def wait_stream(self, other):
        self.waits.append((str(self), str(other)))


def graphed_step(cfg, programs):
    nets, _, elbo = built(cfg, programs)
    optimizer = KerasAdam(nets.parameters(), masked=True, together=True)  # as on a CUDA device
    return TrainStep(elbo, optimizer, cfg.clip_norm, graph=True)


def test_the_step_warms_up_then_captures_once_then_replays_and_returns_a_copy(tiny_cfg, monkeypatch):
    fake = FakeCuda(monkeypatch)
    step_fn = graphed_step(tiny_cfg, load_programs(None, None))
    seen = []
    with pyro.validation_enabled(False):
        for _ in range(WARMUP_STEPS + 3):
            out = step_fn(next(batches(tiny_cfg)), 1.0)
            seen.append((fake.captures, fake.replays))
            assert out.data_ptr() != step_fn.out.data_ptr()  # the next replay overwrites ``out``
    assert seen == [(0, 0)] * WARMUP_STEPS + [(1, 1), (1, 2), (1, 3)]


def test_a_refused_warm_up_step_still_makes_the_run_wait_for_its_kernels(tiny_cfg, tmp_path, monkeypatch):
    """The refused first warm-up step's kernels run on the side stream; the run that unwinds frees their memory
    on its own stream, so that stream must wait for them, refused or not."""
    fake = FakeCuda(monkeypatch)
    source = tmp_path / "guide.py"
    marker = "    embeddings = observational_dropout("
    source.write_text(load_programs(None, None).guide.source.replace(marker, "    video.mean().item()\n" + marker))
    step_fn = graphed_step(tiny_cfg, load_programs(None, str(source)))
    with pyro.validation_enabled(False), pytest.raises(UserError, match=r"\.item\(\).*guide.py.*--cuda-graph off"):
        step_fn(next(batches(tiny_cfg)), 1.0)
    assert fake.waits == [("side stream", "main stream"), ("main stream", "side stream")]


def test_a_step_that_fails_under_the_capture_is_named_by_its_own_error(tiny_cfg, monkeypatch):
    FakeCuda(monkeypatch)
    step_fn = graphed_step(tiny_cfg, load_programs(None, None))
    with pyro.validation_enabled(False):
        for _ in range(WARMUP_STEPS):  # eager warm-ups; the next call captures
            step_fn(next(batches(tiny_cfg)), 1.0)

    def failing(error):
        def step():
            raise error
        return step

    step_fn._step = failing(RuntimeError("CUDA error: operation not permitted when stream is capturing"))
    with pytest.raises(UserError, match="^--cuda-graph: the training step cannot be captured: CUDA error: operation "
                                        "not permitted when stream is capturing; train with --cuda-graph off$"):
        step_fn(next(batches(tiny_cfg)), 1.0)
    step_fn._step = failing(KeyboardInterrupt())  # Ctrl-C during the capture stays a Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        step_fn(next(batches(tiny_cfg)), 1.0)
