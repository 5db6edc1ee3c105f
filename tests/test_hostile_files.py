"""Hostile files (issue 23, points 3 and 6-8): a FIFO or ``/dev/zero`` in place of a run's files, NetCDF and MP4
headers declaring gigabytes, evaluation files of other shapes, pickles that would walk forever or hide object
arrays, escape codes in names and versions, a cache folder linking out of a shared data folder, a tampered
classifier cache. Each is answered in one line, exit code 2, at once, and nothing in the run or data folder
changes. Hangs and memory cases run in a subprocess under a time and memory limit."""
import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

from pyro_cwvae.data import cache
from pyro_cwvae.data.registry import open_dataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation import digit_record, digits, safe_pickle
from pyro_cwvae.files.netcdf import EVALUATION_TITLE
from pyro_cwvae.files.reading import printable
from pyro_cwvae.training.checkpoint import CHECKPOINT
from tests.conftest import address_space_limit
from tests.test_hostile import (answer, edit_checkpoint, invoke, mmnist_folder, run, set_in,  # noqa: F401 (fixtures)
                                trained)

HEADROOM = 5 << 29  # beyond importing torch the command line needs about 0.5 GiB; the crafted files ask for 4-6 GiB
SECONDS = 60  # an answer comes in a few seconds (most of it importing torch); a hang would never come


def tree(folder: Path) -> dict:
    """Every path under ``folder`` (links, FIFOs and devices not followed) with its bytes' hash: any change shows."""
    def entry(path: Path) -> str:
        if path.is_symlink():
            return f"link to {os.readlink(path)}"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "not a file"
    return {str(p.relative_to(folder)): entry(p) for p in sorted(folder.rglob("*"))}


def answer_in_time(args, *folders) -> str:
    """The command in a subprocess under ``HEADROOM`` and ``SECONDS``: exit 2, one line, at once, nothing changed."""
    before = [tree(folder) for folder in folders]
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pyro_cwvae", *map(str, args)], capture_output=True, text=True,
                            timeout=SECONDS, preexec_fn=address_space_limit(HEADROOM), stdin=subprocess.DEVNULL)
    errors = re.findall(r"error: [^\r\n]*", result.stderr)  # after a progress bar, if one was drawn
    print(f"{' '.join(map(str, args))}\n  -> {errors[-1] if errors else ''} ({time.monotonic() - start:.1f} s)")
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert [tree(folder) for folder in folders] == before
    return errors[0]


# 3. Only regular files are read -----------------------------------------------------------------------------

def replace_with(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


COMMANDS = {
    "config.json": (lambda run: ["rollout", "--run", run, "--horizon", 2], "config file"),
    CHECKPOINT: (lambda run: ["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"], "checkpoint"),
    "history.nc": (lambda run: ["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"], "training history"),
    "rollout.nc": (lambda run: ["plot", run / "rollout.nc", "--out", run / "figures"], "rollout file"),
}


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
@pytest.mark.parametrize("name", COMMANDS)
def test_fifo_or_device_in_place_of_a_run_file_is_refused_at_once(run, name, kind):
    replace_with(run / name, kind)
    command, what = COMMANDS[name]
    line = answer_in_time(command(run), run)
    assert str(run / name) in line, line
    assert f"{what} {run / name} is a" in line and "not a regular file" in line, line


def test_fifo_as_config_file_of_a_new_run_is_refused(tmp_path):
    os.mkfifo(tmp_path / "shared.toml")
    line = answer_in_time(["fit", "--config", tmp_path / "shared.toml", "--run-dir", tmp_path / "new"], tmp_path)
    assert f"config file {tmp_path / 'shared.toml'} is a FIFO, not a regular file" in line


def compressed_history(path: Path, steps: int) -> None:
    """A few KB declaring ``steps`` steps: the chunks are never written, so the file holds only its header."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = "pyro-cwvae training history"
        nc.createDimension("step", steps)
        nc.createDimension("level", 2)
        nc.createVariable("step", "i8", ("step",), zlib=True, chunksizes=(1 << 20,))
        nc.createVariable("level", "i8", ("level",))[:] = [1, 2]
        for name in ("loss", "reconstruction", "grad_norm", "kl_scale"):
            nc.createVariable(name, "f4", ("step",), zlib=True, chunksizes=(1 << 20,))
        nc.createVariable("kl", "f4", ("step", "level"), zlib=True, chunksizes=(1 << 20, 2))


def test_netcdf_declaring_2e8_steps_is_refused_before_anything_is_allocated(run):
    compressed_history(run / "history.nc", 200_000_000)
    assert (run / "history.nc").stat().st_size < 64 << 10
    for args in (["plot", run / "history.nc", "--out", run / "figures"],
                 ["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"]):
        line = answer_in_time(args, run)
        assert f"training history {run / 'history.nc'} declares 6.0 GiB of data, more than the 4 GiB" in line


def grown_frames(source: Path, target: Path, side: int) -> None:
    """``source`` rewritten with ``side`` x ``side`` frames whose chunks are never written: a few KB more."""
    with netCDF4.Dataset(source) as old, netCDF4.Dataset(target, "w") as new:
        new.setncatts({name: old.getncattr(name) for name in old.ncattrs()})
        for name, dim in old.dimensions.items():
            new.createDimension(name, side if name in ("y", "x") else len(dim))
        for name, variable in old.variables.items():
            framed = {"y", "x"} & set(variable.dimensions)
            chunks = tuple(min(side, 512) if dim in ("y", "x") else 1 for dim in variable.dimensions)
            copy = new.createVariable(name, variable.dtype, variable.dimensions, zlib=bool(framed),
                                      chunksizes=chunks if framed else None)
            if not framed:
                copy[...] = variable[...]


def test_rollout_declaring_6000x6000_frames_is_refused_before_anything_is_allocated(run):
    grown_frames(run / "rollout.nc", run / "grown.nc", 6000)
    assert (run / "grown.nc").stat().st_size < 1 << 20
    line = answer_in_time(["plot", run / "grown.nc", "--out", run / "figures"], run)
    assert f"rollout file {run / 'grown.nc'}: dimension 'y' has 6,000 entries, more than the 64" in line


def test_plot_calls_a_file_it_cannot_read_what_its_name_says(run, tmp_path):
    """A history.nc that is no NetCDF (its title, which tells the kinds apart, unreadable) is refused as the training
    history it is named for; a rollout renamed history.nc is still drawn as a rollout."""
    (run / "history.nc").write_bytes(b"CDF\x01" + bytes(range(256)) * 8)
    line = answer(["plot", run / "history.nc", "--out", run / "figures"], run)
    assert f"cannot read training history {run / 'history.nc'} as NetCDF" in line, line
    renamed = tmp_path / "elsewhere"
    renamed.mkdir()
    (renamed / "history.nc").write_bytes((run / "rollout.nc").read_bytes())
    result = invoke("plot", renamed / "history.nc", "--out", renamed)
    assert result.exit_code == 0 and "rollout.gif" in result.output, result.output


def test_mp4_declaring_8192x8192_frames_is_refused_before_decoding(run, tmp_path, monkeypatch):
    import av

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    data = tmp_path / "data"
    bad = mmnist_folder(data)
    with av.open(str(bad), "w") as container:  # one black frame: a few hundred KB
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 8192, 8192, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((8192, 8192), np.uint8), format="gray")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    line = answer_in_time(["data", "info", data], run, data)
    assert f"{bad} declares 8192x8192 frames, more than the 1024x1024" in line
    line = answer_in_time(["rollout", "--run", run, "--data-dir", data, "--quiet"], run, data)
    assert f"{bad} declares 8192x8192 frames" in line


# 6. Evaluation files are checked like rollout files ----------------------------------------------------------

def evaluation(runs: int = 2, times: int = 6, levels: int = 2) -> xr.Dataset:
    """The smallest evaluation file ``plot`` draws: SSIM and PSNR with their baselines, the KL table."""
    curves = {f"{metric}{suffix}": (dims, np.random.default_rng(0).random(shape).astype(np.float32))
              for metric in ("ssim", "psnr")
              for suffix, dims, shape in (("", ("run", "time"), (runs, times)), ("_last_frame", ("time",), times),
                                          ("_random_frame", ("time",), times))}
    return xr.Dataset({**curves, "kl_table": (("run", "level"), np.ones((runs, levels), np.float32)),
                       "is_context": ("time", np.arange(times) < 2)},
                      coords={"run": [f"run{i}" for i in range(runs)], "time": np.arange(times),
                              "level": np.arange(1, levels + 1)},
                      attrs={"title": EVALUATION_TITLE})


EVALUATION_EDITS = {
    "curve over two dims": (lambda ds: ds.assign(ssim=(("run", "level"), ds.kl_table.values)),
                            "variable 'ssim' has dims (run, level), not (run, time)"),
    "text curve": (lambda ds: ds.assign(psnr=ds.psnr.astype(str)), "variable 'psnr' is <U"),
    "baseline per run": (lambda ds: ds.assign(ssim_last_frame=ds.ssim), "variable 'ssim_last_frame' has dims"),
    "KL table of one dim": (lambda ds: ds.assign(kl_table=ds.kl_table.isel(level=0)), "variable 'kl_table'"),
    "context as floats": (lambda ds: ds.assign(is_context=ds.is_context.astype("float32")), "not bool"),
    "no baseline": (lambda ds: ds.drop_vars("psnr_random_frame"), "needs the variable 'psnr_random_frame'"),
    "LPIPS without baselines": (lambda ds: ds.assign(lpips=ds.ssim), "with 'lpips' needs the variable"),
    "FVD of other dims": (lambda ds: ds.assign(fvd=ds.ssim, fvd_horizon=ds.kl_table.isel(level=0)),
                          "with 'fvd' needs the variable 'window_start'"),
    "no time": (lambda ds: ds.isel(time=slice(0, 0)), "dimension 'time' is empty"),
    "text levels": (lambda ds: ds.assign_coords(level=["a", "b"]), "coordinate 'level'"),
}


def test_valid_evaluation_file_is_plotted(tmp_path):
    evaluation().to_netcdf(tmp_path / "eval.nc")
    result = invoke("plot", tmp_path / "eval.nc")
    assert result.exit_code == 0 and (tmp_path / "evaluation.png").exists(), result.output


@pytest.mark.parametrize("case", EVALUATION_EDITS)
def test_evaluation_file_of_other_dims_or_dtypes_is_refused(tmp_path, case):
    edit, message = EVALUATION_EDITS[case]
    edit(evaluation()).to_netcdf(tmp_path / "eval.nc")
    line = answer(["plot", tmp_path / "eval.nc"], tmp_path)
    assert str(tmp_path / "eval.nc") in line and message in line, line


# 7. The restricted unpickler ----------------------------------------------------------------------------------

def shared_references() -> bytes:
    """2.4 KB: 30 levels of lists, each holding the level below 40 times (40^30 paths, 31 distinct lists)."""
    nested = [0]
    for _ in range(30):
        nested = [nested] * 40
    return pickle.dumps(nested, protocol=2)


def test_pickle_of_shared_references_is_walked_once_per_object(tmp_path):
    payload = shared_references()
    assert len(payload) < 2500
    (tmp_path / "weights.pkl").write_bytes(payload)
    code = ("import sys; from pyro_cwvae.evaluation import safe_pickle; "
            "print(len(safe_pickle.load(sys.argv[1])))")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "weights.pkl")], capture_output=True,
                            text=True, timeout=SECONDS, preexec_fn=address_space_limit(HEADROOM))
    assert result.returncode == 0 and result.stdout.strip() == "40", result.stderr
    assert time.monotonic() - start < SECONDS / 2


def refused(payload: bytes, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        safe_pickle.load(io.BytesIO(payload), "weights.pkl")
    assert "\n" not in str(caught.value)


def test_pickle_nested_too_deep_is_refused():
    depth = 10_000  # opcode by opcode: 10,000 empty lists, each appended to the one before
    refused(b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".", "nested deeper than 32")


def test_object_array_in_instance_attributes_is_refused():
    holder = __import__("collections").OrderedDict(kernel=np.zeros(2))
    holder.hidden = np.array([1, "a"], dtype=object)
    refused(pickle.dumps({"layer": holder}), "array of Python objects")


def test_object_array_in_dtype_metadata_is_refused():
    dtype = np.dtype(np.float32, metadata={"hidden": np.array([1, "a"], dtype=object)})
    refused(pickle.dumps({"kernel": np.zeros(3, dtype=dtype)}), "array of Python objects")


def test_weight_archive_that_is_a_fifo_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "weights.pkl")
    with pytest.raises(UserError, match="weight archive .* is a FIFO, not a regular file"):
        safe_pickle.load(tmp_path / "weights.pkl")


# 8. Escape codes, cache links, the classifier cache, torch >= 2.6 --------------------------------------------

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m"


def test_escape_codes_in_a_checkpoint_version_are_not_printed(run):
    edit_checkpoint(run, set_in("version", f"{ESCAPES}9.9\r\nerror: fake"))
    result = subprocess.run([sys.executable, "-m", "pyro_cwvae", "rollout", "--run", str(run), "--horizon", "2",
                             "--context", "2", "--sequences", "1", "--samples", "1", "--out", str(run / "other.nc"),
                             "--quiet"], capture_output=True, text=True, timeout=SECONDS)
    assert result.returncode == 0, result.stderr
    assert not {"\x1b", "\x07", "\r"} & set(result.stdout + result.stderr)
    assert "written by pyro-cwvae 9.9??error: fake; this is" in result.stderr, result.stderr


def test_escape_codes_in_names_from_a_data_folder_are_not_printed(run, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    data = tmp_path / "data"
    mmnist_folder(data)
    bad = data / "test-seq1000" / f"00001{ESCAPES}.mp4"
    bad.write_bytes(b"")
    line = answer(["rollout", "--run", run, "--data-dir", data, "--quiet"], run)
    assert "\x1b" not in line and f"cannot read {printable(str(bad))} as a video" in line, line


def test_printable_keeps_text_and_drops_control():
    assert printable("café 1.0 — ok") == "café 1.0 — ok"
    assert printable("a\x1b[2Jb\x1b]0;title\x07c\nd\u202ee") == "abc?d?e"


def test_cache_is_never_written_through_a_link_out_of_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    mmnist_folder(data)
    elsewhere.mkdir()
    (data / cache.CACHE_FOLDER).symlink_to(elsewhere)
    dataset = open_dataset("mmnist", data)
    assert list(elsewhere.iterdir()) == []
    assert cache.cache_folder(data).is_relative_to(tmp_path / "user-cache")
    assert dataset.test_video(0).shape[1:] == (1, 64, 64)


def test_cache_index_that_is_a_fifo_is_rebuilt_not_read(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    mmnist_folder(tmp_path)
    folder = cache.cache_folder(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "mmnist-test.json")
    (folder / "mmnist-train.json").symlink_to("/dev/zero")
    assert open_dataset("mmnist", tmp_path).num_test == 3
    assert (folder / "mmnist-test.json").is_file() and not (folder / "mmnist-train.json").is_symlink()


def tamper_classifier(folder: Path, payload) -> None:
    """A classifier cache whose weights are ``payload`` and whose record vouches for them."""
    path = folder / digit_record.FILE
    torch.save(payload, path)
    record = digit_record.Record(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), steps=1, batch_size=1, seed=0,
                           pair_accuracy=0.5)
    path.with_suffix(".json").write_text(json.dumps(record.__dict__))


@pytest.mark.parametrize("payload,message", [
    ({"x": __import__("collections").Counter(a=1)}, "cannot load the digit classifier"),
    ({"features.0.weight": torch.zeros(3)}, "cannot load the digit classifier"),
])
def test_tampered_classifier_cache_is_one_line(tmp_path, monkeypatch, payload, message):
    monkeypatch.setenv("PYRO_CWVAE_WEIGHTS", str(tmp_path))
    digits.load.cache_clear()
    tamper_classifier(tmp_path, payload)
    line = answer(["classifier", "info"], tmp_path)
    assert message in line and "classifier train --force" in line, line


@pytest.mark.parametrize("name", ["lpips", "i3d"])
def test_tampered_perceptual_weights_run_no_code(tmp_path, monkeypatch, name):
    """Converted LPIPS / I3D weights whose record vouches for a payload: loaded with the weights-only loader, refused
    in one line, and nothing runs."""
    from pyro_cwvae.evaluation import sources, weights
    from tests.test_hostile import RunsCode
    from tests.test_perceptual import pinned_record

    monkeypatch.setenv("PYRO_CWVAE_WEIGHTS", str(tmp_path))
    sentinel, path = tmp_path / "SOMEFILE", tmp_path / sources.source_of(name).file
    torch.save({"x": RunsCode(sentinel)}, path)
    path.with_suffix(".json").write_text(pinned_record(name, path))
    with pytest.raises(UserError, match=f"cannot load the .* weights {re.escape(str(path))}") as caught:
        weights.load_state_dict(name, fetch_missing=False)
    assert "\n" not in str(caught.value) and not sentinel.exists()


def test_classifier_record_that_is_a_fifo_is_refused_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_CWVAE_WEIGHTS", str(tmp_path))
    os.mkfifo(tmp_path / "digit-classifier.json")
    line = answer_in_time(["classifier", "info"], tmp_path)
    assert "classifier record" in line and "is a FIFO, not a regular file" in line


def test_torch_of_a_safe_weights_only_loader_is_required():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert "torch>=2.6" in project["dependencies"]
