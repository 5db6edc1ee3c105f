"""Hostile inputs: files someone shares (a run directory, a rollout file, a video archive, a weight archive) cannot
run code or crash the tools. Through the real command line each gets one line ``error: ...`` and exit code 2, and
the run directory is left exactly as it was."""
import hashlib
import importlib.util
import io
import json
import os
import pickle
import random
import re
import shutil
import zipfile

import av
import numpy as np
import pyro.util
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from pyro_cwvae.evaluation import safe_pickle
from pyro_cwvae.training.checkpoint import CHECKPOINT, load_checkpoint, restore_nets, set_rng_state
from pyro_cwvae.cli.app import app
from pyro_cwvae.model.config import Config
from pyro_cwvae.data import DatasetError, cache, video_io
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.data.registry import open_dataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.training.history import History
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.training.loop import fit
from tests.conftest import TINY


class RunsCode:
    """Unpickling this runs ``touch sentinel``: the payload of the attack the issue reports."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run of the tiny model, with a rollout file beside it."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    fit(Config(**{**TINY, "steps": 2}, run_dir=str(run)), GeneratedMovingMNIST(), progress=False)
    result = invoke("rollout", "--run", run, "--horizon", 2, "--context", 2, "--sequences", 1, "--samples", 1,
                    "--quiet")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run, for one hostile edit."""
    return shutil.copytree(trained, tmp_path / "run")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder) -> dict:
    """Every path under ``folder`` with the hash of its bytes (folders too): any change shows."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def answer(args, run, sentinel=None) -> str:
    """Run the CLI on a hostile input; check exit 2, one error line, no traceback, nothing changed; return it."""
    before = snapshot(run)
    result = invoke(*args)
    lines = result.output.strip().splitlines()
    print(f"{' '.join(map(str, args))}\n  -> {lines[-1] if lines else ''}")  # the answers, for the note
    assert result.exit_code == 2, result.output
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.output
    assert "Traceback" not in result.output
    assert snapshot(run) == before
    assert sentinel is None or not sentinel.exists(), "the hostile file ran code"
    return lines[-1]


# Checkpoints ------------------------------------------------------------------------------------------------

def edit_checkpoint(run, edit) -> None:
    """Rewrite the run's (trusted, test-made) checkpoint after ``edit`` changed its dict in place."""
    state = torch.load(run / CHECKPOINT, weights_only=True)
    edit(state)
    torch.save(state, run / CHECKPOINT)


def doubled_first_weight(state):
    name, tensor = next(iter(state["nets"].items()))
    state["nets"][name] = tensor.double()


def adam_state_for_no_parameter(state):
    optimizer_state = state["optimizer"]["state"]
    optimizer_state[999] = optimizer_state[0]


def reshaped_first_weight(state):
    name, tensor = next(iter(state["nets"].items()))
    state["nets"][name] = torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:])


def resized_adam_moment(state):
    moments = state["optimizer"]["state"][0]
    moments["exp_avg"] = torch.zeros(moments["exp_avg"].numel() + 3)


def set_in(*keys_and_value):
    *keys, value = keys_and_value

    def edit(state):
        for key in keys[:-1]:
            state = state[key]
        state[keys[-1]] = value
    return edit


CHECKPOINT_EDITS = {
    "missing key": (lambda state: state.pop("optimizer"), "the checkpoint lacks optimizer"),
    "unknown key": (set_in("extra", 1), "unknown key(s) extra"),
    "unknown format": (set_in("format", 99), "format 99 is not one this pyro-cwvae reads"),
    "step of a wrong type": (set_in("step", "2"), "step must be an integer, got a str"),
    "step of a bool": (set_in("step", True), "step must be an integer, got a bool"),
    "weight of another dtype": (doubled_first_weight, "is float64"),
    "optimizer state for no parameter": (adam_state_for_no_parameter, "entry 999 for no parameter"),
    "CUDA random state of floats": (set_in("rng", 0, "cuda", [torch.zeros(3)]),
                                    "CUDA random states are not byte tensors"),
    "weight of another shape": (reshaped_first_weight, "but the model of its config has float32"),
    "weights of another model": (lambda state: state["nets"].popitem(), "nets lacks"),
    "config with a wrong type": (set_in("config", "levels", "2"), "config key 'levels' must be an integer"),
    "config with an unknown key": (set_in("config", "colour", "red"), "unknown config key(s): colour"),
    "config that does not validate": (set_in("config", "seq_len", 1), "shorter than one step of the top level"),
    "optimizer for other sizes": (resized_adam_moment, "does not fit a parameter of shape"),
    "optimizer setting of a wrong type": (set_in("optimizer", "param_groups", 0, "lr", torch.zeros(3)),
                                          "optimizer setting 'lr' is a Tensor"),
    "random state of other sizes": (set_in("rng", 0, "torch", torch.zeros(7, dtype=torch.uint8)),
                                    "a random state does not load"),
    "programs without a source": (set_in("programs", "model", "source", None),
                                  "programs.model.source must be a string, got a NoneType"),
}


def test_malicious_checkpoint_runs_no_code_in_any_command(run, tmp_path):
    sentinel = tmp_path / "SOMEFILE"
    torch.save({"format": 1, "x": RunsCode(sentinel)}, run / CHECKPOINT)
    for args in (["rollout", "--run", run, "--horizon", 5],
                 ["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"],
                 ["checkpoint", "upgrade", run]):
        line = answer(args, run, sentinel)
        assert "posix.system, which the safe loader does not run" in line or "nt.system" in line
        assert f"pyro-cwvae checkpoint upgrade {run} --trust" in line
    torch.load(run / CHECKPOINT, weights_only=False)  # the payload has teeth: the full loader runs it
    assert sentinel.exists()


@pytest.mark.parametrize("case", CHECKPOINT_EDITS)
def test_checkpoint_that_is_not_what_pyro_cwvae_writes_is_refused(run, case):
    edit, message = CHECKPOINT_EDITS[case]
    edit_checkpoint(run, edit)
    line = answer(["rollout", "--run", run, "--horizon", 5], run)
    assert f"{run / CHECKPOINT} is not a checkpoint pyro-cwvae can use" in line and message in line, line


def test_checkpoint_of_a_list_is_refused(run):
    torch.save([1, 2, 3], run / CHECKPOINT)
    assert "the checkpoint is a list, not a dict" in answer(["fit", "--resume", "--run-dir", run], run)


@pytest.mark.parametrize("text,message", [
    ('{"colour": "red"}', "config.json: unknown config key(s): colour"),
    ('{"z_size": "four"}', "config.json: config key 'z_size' must be an integer, got 'four' (str)"),
    ('{"kl_beta": "high"}', "config key 'kl_beta' must be a list"),
    ('[1, 2]', "config.json holds a JSON list, not a config"),
    ('{"levels": 2', "as JSON"),
])
def test_damaged_config_json_is_refused(run, text, message):
    (run / "config.json").write_text(text)
    for args in (["rollout", "--run", run], ["fit", "--resume", "--run-dir", run, "--steps", 3]):
        assert message in answer(args, run)


def write_format_1(run) -> dict:
    """Turn the run's checkpoint into format 1: NumPy's random state as an array, in pyro.util's layout, and the
    encoder's parts under their former names (frames -> conv, levels -> stacks)."""
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    old_rng = pyro.util.get_rng_state()
    former = {"encoder.conv.": "encoder.frames.", "encoder.stacks.": "encoder.levels."}

    def to_format_1(state):
        state["nets"] = {next((old + name[len(new):] for new, old in former.items() if name.startswith(new)), name):
                         tensor for name, tensor in state["nets"].items()}
        state.update(format=1, rng=[{"pyro": old_rng}])
    edit_checkpoint(run, to_format_1)
    return old_rng


def test_format_1_checkpoint_is_refused_in_one_line_and_upgrades_with_trust(run):
    """Format 1 (NumPy's random state as an array, the encoder's parts under former names) is not read; the
    refusal names ``checkpoint upgrade --trust``, which converts it: its weights and random states restore exactly."""
    old_rng = write_format_1(run)
    before = torch.load(run / CHECKPOINT, weights_only=False)["nets"]
    for args in (["rollout", "--run", run, "--horizon", 5], ["fit", "--resume", "--run-dir", run, "--steps", 3]):
        line = answer(args, run)
        assert "which the safe loader does not run" in line and f"checkpoint upgrade {run} --trust" in line, line

    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()
    pyro.util.set_rng_state(old_rng)
    expected = draws()
    result = invoke("checkpoint", "upgrade", run, "--trust")
    assert result.exit_code == 0 and "from format 1 to format 2" in result.output, result.output
    state = load_checkpoint(run)
    set_rng_state(state["rng"][0])
    assert draws() == expected
    nets = CWVAENets(Config.from_dict(state["config"]))
    restore_nets(nets, state)
    assert torch.equal(nets.encoder.stack(2).out.weight, before["encoder.levels.0.out.weight"])
    assert "already format 2" in invoke("checkpoint", "upgrade", run).output


def test_format_1_without_numpy_arrays_is_refused_with_the_hint_too(run):
    edit_checkpoint(run, set_in("format", 1))
    line = answer(["rollout", "--run", run], run)
    assert "format 1 is not one this pyro-cwvae reads (2)" in line and f"upgrade {run} --trust" in line, line


@pytest.mark.parametrize("trust", [False, True])
def test_upgrade_checks_what_it_would_keep_or_write(run, trust):
    """A checkpoint of the current format that is not what training writes is refused, not called up to date; with
    --trust too (the full loader reads it, the checks still apply)."""
    edit_checkpoint(run, set_in("extra", 1))
    line = answer(["checkpoint", "upgrade", run, *(["--trust"] if trust else [])], run)
    assert "is not a checkpoint pyro-cwvae can use" in line and "unknown key(s) extra" in line, line


def test_checkpoint_the_safe_loader_refuses_is_upgraded_only_with_trust(run):
    """A format-1 checkpoint pickled under NumPy 1 names its array builder numpy.core.multiarray._reconstruct,
    which the safe loader does not admit: refused by default, rewritten in format 2 with --trust."""
    write_format_1(run)
    with zipfile.ZipFile(run / CHECKPOINT) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(run / CHECKPOINT, "w") as archive:
        for info, data in members:
            archive.writestr(info, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    line = answer(["rollout", "--run", run], run)
    assert "numpy.core.multiarray._reconstruct, which the safe loader does not run" in line
    answer(["checkpoint", "upgrade", run], run)
    result = invoke("checkpoint", "upgrade", run, "--trust")
    assert result.exit_code == 0 and "from format 1 to format 2" in result.output, result.output
    assert torch.load(run / CHECKPOINT, weights_only=True)["format"] == 2
    assert load_checkpoint(run)["step"] == 2


# NetCDF files -----------------------------------------------------------------------------------------------

def edit_netcdf(path, edit) -> None:
    with xr.open_dataset(path) as ds:
        changed = edit(ds.load())
    for variable in changed.variables.values():
        variable.encoding.clear()  # the stored chunking may not fit the edited shapes
    changed.to_netcdf(path)


ROLLOUT_EDITS = {
    "no prediction": (lambda ds: ds.drop_vars("prediction"), "no variable 'prediction'"),
    "other dimensions": (lambda ds: ds.assign(prediction=ds.prediction.transpose("sequence", "sample", ...)),
                         "variable 'prediction' has dims (sequence, sample, time, channel, y, x)"),
    "renamed dimension": (lambda ds: ds.rename_dims(time="frame"), "variable 'prediction' has dims"),
    "float frames": (lambda ds: ds.assign(truth=ds.truth.astype("float32")), "variable 'truth' is float32, not uint8"),
    "text metric": (lambda ds: ds.assign(psnr=ds.psnr.astype(str)), "not floating point"),
    "no frames": (lambda ds: ds.isel(time=slice(0, 0)), "dimension 'time' is empty"),
    "two channels": (lambda ds: ds.isel(channel=[0, 0]), "1 or 3 channels"),
}


@pytest.mark.parametrize("case", ROLLOUT_EDITS)
def test_rollout_file_that_is_not_what_pyro_cwvae_writes_is_refused(run, case):
    edit, message = ROLLOUT_EDITS[case]
    edit_netcdf(run / "rollout.nc", edit)
    line = answer(["plot", run / "rollout.nc"], run)
    assert str(run / "rollout.nc") in line and message in line, line


HISTORY_EDITS = {
    "other level count": (lambda ds: History(3).to_dataset({}), "it has 3 levels, the run 2"),
    "swapped dims": (lambda ds: ds.assign(kl=ds.kl.transpose()), "variable 'kl' is float32 (level, step)"),
    "no loss": (lambda ds: ds.drop_vars("loss"), "no variable 'loss'"),
    "steps going back": (lambda ds: ds.assign_coords(step=ds.step[::-1].values), "steps are not increasing"),
    "preview of text": (lambda ds: ds.assign(preview_ssim=("preview_step", np.array(["a", "b"]))),
                        "'preview_ssim' is not floating point along preview_step"),
    "preview on the steps": (lambda ds: ds.assign(preview_ssim=ds.loss), "'preview_ssim' is not floating point"),
    "previews going back": (lambda ds: ds.assign(preview_ssim=("preview_step", np.zeros(2, np.float32)))
                            .assign_coords(preview_step=[2, 1]), "preview_steps are not increasing"),
    "a step twice": (lambda ds: ds.assign_coords(step=np.r_[ds.step.values[:-1], ds.step.values[-2]]),
                     "steps are not increasing"),
    "a preview twice": (lambda ds: ds.assign(preview_ssim=("preview_step", np.zeros(2, np.float32)))
                        .assign_coords(preview_step=[1, 1]), "preview_steps are not increasing"),
}


@pytest.mark.parametrize("case", HISTORY_EDITS)
def test_history_that_is_not_what_pyro_cwvae_writes_is_refused_on_resume(run, case):
    edit, message = HISTORY_EDITS[case]
    edit_netcdf(run / "history.nc", edit)
    line = answer(["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"], run)
    assert f"cannot read training history {run / 'history.nc'}" in line and message in line, line


# Video archives ---------------------------------------------------------------------------------------------

FRAMES = 20


def write_front_indexed_mp4(path, frames: np.ndarray) -> list[int]:
    """Gray frames as an MP4 with its index first (as web videos are), so the file stays readable when cut;
    returns the byte offset where each frame's data ends."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for picture in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[0]), format="gray")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        return sorted(packet.pos + packet.size for packet in container.demux(video=0) if packet.size)


def gray_videos(count: int, frames: int = FRAMES) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (frames, 1, 64, 64), dtype=np.uint8) for _ in range(count)]


def mmnist_folder(root):
    """Good videos in the layout of moving_mnist_2digit.zip; the test split's second one is made hostile."""
    for split, count in (("train-seq100", 2), ("test-seq1000", 3)):
        (root / split).mkdir(parents=True)
        for index, video in enumerate(gray_videos(count)):
            write_front_indexed_mp4(root / split / f"{index:05d}.mp4", video)
    return root / "test-seq1000" / "00001.mp4"


def cut_at_frame(path, keep: int) -> None:
    """Cut a front-indexed MP4 right after frame ``keep``: it still decodes cleanly, only shorter."""
    ends = write_front_indexed_mp4(path, gray_videos(1)[0])
    path.write_bytes(path.read_bytes()[:ends[keep - 1]])


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    return tmp_path / "data"


def test_zero_length_video_among_good_ones_is_refused_by_name(run, data):
    bad = mmnist_folder(data)
    bad.write_bytes(b"")
    line = answer(["rollout", "--run", run, "--data-dir", data, "--quiet"], run)
    assert f"cannot read {bad} as a video" in line


def test_truncated_video_among_good_ones_is_refused_not_read_short(run, data):
    bad = mmnist_folder(data)
    cut_at_frame(bad, keep=12)
    line = answer(["rollout", "--run", run, "--data-dir", data, "--quiet"], run)
    assert f"{bad} is truncated: its header lists {FRAMES} frames but only" in line


def test_a_video_one_frame_short_of_its_header_is_refused(tmp_path):
    bad = tmp_path / "00000.mp4"
    cut_at_frame(bad, keep=FRAMES - 1)
    with av.open(str(bad)) as container:  # the cut file: its header still promises every frame
        assert container.streams.video[0].frames == FRAMES
        assert sum(1 for _ in container.decode(video=0)) == FRAMES - 1
    with pytest.raises(DatasetError, match=f"is truncated: its header lists {FRAMES} frames but only {FRAMES - 1}"):
        video_io.decode(str(bad), bad.name, channels=1)


def test_truncated_avi_is_refused(tmp_path):
    """AVI files (KTH) cut anywhere decode cleanly, only shorter: the header's frame count gives them away."""
    for name in ("person01_walking_d1_uncomp.avi", "person20_walking_d1_uncomp.avi"):
        video_io.write_video(tmp_path / name, gray_videos(1)[0], codec="mpeg4")
    bad = tmp_path / "person20_walking_d1_uncomp.avi"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 6 // 10])
    with pytest.raises(DatasetError, match=f"{bad.name} is truncated: its header lists {FRAMES} frames"):
        open_dataset("kth", tmp_path)


@pytest.mark.parametrize("lengths", [[-5, 45, 20], [0, 40, 20], ["20", "20", "20"], [20], None])
def test_damaged_cache_index_is_rebuilt_not_trusted(tmp_path, monkeypatch, lengths):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    mmnist_folder(tmp_path)
    first = open_dataset("mmnist", tmp_path).test_video(1)
    index_file = cache.cache_folder(tmp_path) / "mmnist-test.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "lengths": lengths}))
    again = open_dataset("mmnist", tmp_path)
    assert json.loads(index_file.read_text())["lengths"] == [FRAMES] * 3  # rebuilt
    assert np.array_equal(again.test_video(1), first)


# Weight archives --------------------------------------------------------------------------------------------

WEIGHTS = {
    "conv": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "bias": np.zeros(4, np.float64)},
    "bn": {"count": np.int64(7), "mask": np.array([True, False])},
    "order": ("a", 1, 2.5, b"raw", None),
    "sets": (frozenset({1}), {2}),
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_weight_archive_of_arrays_reads_back_exactly(protocol):
    loaded = safe_pickle.load(io.BytesIO(pickle.dumps(WEIGHTS, protocol=protocol)), "weights.pkl")
    for layer, arrays in WEIGHTS.items():
        if isinstance(arrays, dict):
            for name, array in arrays.items():
                assert loaded[layer][name].dtype == array.dtype and np.array_equal(loaded[layer][name], array)
    assert loaded["order"] == WEIGHTS["order"] and loaded["sets"] == WEIGHTS["sets"]


def refused_without_running(payload: bytes, path, sentinel) -> None:
    path.write_bytes(payload)
    with pytest.raises(UserError, match=f"weight archive {re.escape(str(path))} is refused") as caught:
        safe_pickle.load(path)
    assert "\n" not in str(caught.value) and not sentinel.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_weight_archive_that_would_run_code_is_refused_and_nothing_runs(tmp_path, protocol):
    sentinel = tmp_path / "SOMEFILE"
    refused_without_running(pickle.dumps({"kernel": np.zeros(2), "x": RunsCode(sentinel)}, protocol=protocol),
                            tmp_path / "reduce.pkl", sentinel)
    refused_without_running(pickle.dumps(np.array([RunsCode(sentinel)], dtype=object), protocol=protocol),
                            tmp_path / "object_array.pkl", sentinel)


def hand_written_payloads(sentinel) -> dict[str, str]:
    """Pickles written opcode by opcode (independent of how pickle writes objects), each creating ``sentinel``."""
    return {
        "exec": f"cbuiltins\nexec\n(Vopen({str(sentinel)!r}, 'w')\ntR.",
        "getattr": f"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(Vtouch {sentinel}\ntR.",
        "numpy.save": f"cnumpy\nsave\n(V{sentinel}\nI1\ntR.",  # NumPy is admitted for arrays, nothing else
        "numpy submodule": f"c{NPYIO}\nsave\n(V{sentinel}\nI1\ntR.",  # nor any of NumPy's submodules
    }


NPYIO = "numpy.lib._npyio_impl" if importlib.util.find_spec("numpy.lib._npyio_impl") else "numpy.lib.npyio"


@pytest.mark.parametrize("name", ["exec", "getattr", "numpy.save", "numpy submodule"])
def test_hand_written_pickle_that_calls_a_function_is_refused(tmp_path, name):
    sentinel = tmp_path / "SOMEFILE.npy"
    payload = hand_written_payloads(sentinel)[name].encode()
    refused_without_running(payload, tmp_path / "weights.pkl", sentinel)
    pickle.loads(payload)  # the payload has teeth: the plain unpickler runs it
    assert sentinel.exists()


def test_codecs_other_than_latin1_are_unreachable(tmp_path):
    """Protocol-2 pickles spell bytes as _codecs.encode(text, 'latin1'); no other codec may be called."""
    refused_without_running(b"c_codecs\nencode\n(Vx\nVrot13\ntR.", tmp_path / "weights.pkl", tmp_path / "none")


def test_weight_archive_over_200_mib_is_refused_before_it_is_read(tmp_path):
    """The real archives' pickles are 10 and 51 MB; a sparse file a byte over 200 MiB is refused by its size."""
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as file:
        file.truncate((200 << 20) + 1)
    with pytest.raises(UserError, match="weight archive .* has 209,715,201 bytes, more than the 209,715,200"):
        safe_pickle.load(path)


def test_weight_archive_of_more_than_a_million_objects_is_refused():
    """The real archives hold a few hundred containers and arrays."""
    with pytest.raises(UserError, match="more than 1,000,000 objects"):
        safe_pickle.load(io.BytesIO(pickle.dumps([[] for _ in range(1_000_001)])), "w.pkl")


def test_array_of_python_objects_is_refused_even_without_code():
    with pytest.raises(UserError, match="array of Python objects"):
        safe_pickle.load(io.BytesIO(pickle.dumps({"w": np.array([1, "a"], dtype=object)})), "w.pkl")


# Prediction options and non-finite updates -------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--seed", -1, "--seed must not be negative, got -1"),
    ("--seed", 2**64, "--seed must lie between 0 and 4294967295"),
    ("--samples", 10**9, "--samples must lie between 1 and 1000"),
    ("--horizon", 10**9, "--horizon must lie between 1 and 100000"),
    ("--sequences", 0, "--sequences must be at least 1"),
])
def test_rollout_options_are_bounded_before_anything_is_allocated(run, option, value, message):
    assert message in answer(["rollout", "--run", run, option, value, "--quiet"], run)


def test_too_many_predicted_frames_are_refused_in_one_line(run):
    line = answer(["rollout", "--run", run, "--samples", 1000, "--sequences", 1000, "--horizon", 100, "--quiet"], run)
    assert "frames, more than the 10,000,000 one rollout holds" in line


def test_an_update_that_makes_the_weights_non_finite_is_never_checkpointed(tmp_path, monkeypatch):
    """A finite loss and gradient whose update overflows the weights (as --lr inf did): the run stops with exit 1
    and the checkpoint on disk is the last one with finite weights."""
    from pyro_cwvae.training.optim import KerasAdam

    taken = KerasAdam.step

    def overflowing(self, *args, **kwargs):
        result = taken(self, *args, **kwargs)
        if self.state[self.param_groups[0]["params"][0]]["step"] >= 4:  # the last step: its loss was finite
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(KerasAdam, "step", overflowing)
    run_dir = tmp_path / "run"
    args = ["fit", "--run-dir", run_dir, "--quiet",
            *[f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()]]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "the weights are not finite at step 4" in result.output.strip().splitlines()[-1]
    state = load_checkpoint(run_dir)
    assert state["step"] == 2
    assert all(torch.isfinite(tensor).all() for tensor in state["nets"].values())
