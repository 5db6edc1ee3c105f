"""Settings from one place: every Config field is a `fit` option, preset files and a run's config.json are valid
`--config` files, and the command line overrides them."""
import dataclasses
import re
import json
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyro_cwvae.cli import app as cli
from pyro_cwvae.cli import options as cli_options
from pyro_cwvae.data.archives import ARCHIVES
from pyro_cwvae.model.config import CONFIG_FILE, PRESET_NAMES, Config, preset, preset_file, read_config_file, tomllib
from pyro_cwvae.training.history import History
from pyro_cwvae.training.loop import FitResult

# A value for every field, different from the demo preset's and valid with the others at their demo values. A new
# field without one here fails test_every_field_has_a_test_value: it must be settable too.
VALUES = {
    "levels": ("2", 2), "factor": ("4", 4), "z_size": ("7", 7), "h_size": ("9", 9), "embed_size": ("11", 11),
    "enc_dense_size": ("13", 13), "enc_dense_layers": ("2", 2), "min_std": ("0.01", 0.01), "dec_std": ("0.5", 0.5),
    "channels": ("3", 3), "dataset": ("gqn", "gqn"), "data_dir": ("somewhere", "somewhere"),
    "seq_len": ("40", 40), "speed": ("2.0", 2.0), "workers": ("0", 0), "steps": ("5", 5),
    "batch_size": ("3", 3), "lr": ("0.002", 0.002), "adam_eps": ("1e-7", 1e-7), "clip_norm": ("100", 100.0),
    "elbo": ("meanfield", "meanfield"), "kl_warmup": ("10", 10), "kl_balance": ("0.2", 0.2),
    "free_nats": ("3", 3.0), "kl_beta": ("1,0.1,0.1", [1.0, 0.1, 0.1]), "seed": ("4", 4), "device": ("cpu", "cpu"),
    "precision": ("bf16", "bf16"), "compile": ("default", "default"), "model": ("m.py", "m.py"),
    "guide": ("g.py", "g.py"), "run_dir": ("RUN", "RUN"), "checkpoint_every": ("2", 2), "context": ("12", 12),
    "obs_dropout": ("0.5", 0.5), "obs_dropout_span": ("6", 6), "deterministic": (None, True),  # a flag: --deterministic
    "cuda_graph": ("off", "off"), "tensorboard": ("off", "off"), "preview_every": ("7", 7),
}


@pytest.fixture
def configs(monkeypatch):
    """The configs `pyro-cwvae fit` would train, captured instead of training (and without opening any data)."""
    captured = []

    def capture(cfg, data, **_):
        captured.append(cfg)
        return FitResult(cfg.run_dir, 0, History(cfg.levels), nets=None)

    monkeypatch.setattr("pyro_cwvae.training.loop.fit", capture)
    monkeypatch.setattr("pyro_cwvae.data.registry.open_dataset", lambda *args, **kwargs: None)
    monkeypatch.setattr("pyro_cwvae.watch.watchers_for", lambda *args, **kwargs: [])
    return captured


def fit(tmp_path, *args) -> Config:
    """The config of ``pyro-cwvae fit ARGS`` run in ``tmp_path``; a failed command fails the test."""
    result = CliRunner().invoke(cli.app, ["fit", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_every_field_has_a_test_value():
    assert set(VALUES) == {field.name for field in dataclasses.fields(Config)}


def test_every_field_is_settable_from_the_command_line(configs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for program in ("m.py", "g.py"):  # a new run records its program files' absolute paths
        (tmp_path / program).write_text("")
    for name, (text, value) in VALUES.items():
        value = str(tmp_path.resolve() / value) if name in ("model", "guide") else value
        if name != "run_dir":
            given = [f"--{name.replace('_', '-')}"] + ([text] if text is not None else [])
            fit(tmp_path, *given, "--run-dir", tmp_path / name)
        else:
            fit(tmp_path, "--run-dir", text)
        cfg = configs.pop()
        assert getattr(cfg, name) == value, name
        assert getattr(preset("demo"), name) != value, f"{name}: the test value must differ from the demo's"


def test_every_option_has_the_help_of_its_field():
    result = CliRunner().invoke(cli.app, ["fit", "--help"], terminal_width=400, env={"COLUMNS": "400"})
    flat = " ".join(result.output.split())
    for field in dataclasses.fields(Config):
        assert f"--{field.name.replace('_', '-')}" in flat
        assert " ".join(field.metadata["help"].split()[:4]) in flat, field.name


def test_a_runs_config_json_given_to_config_gives_the_same_config(configs, tmp_path):
    fit(tmp_path, "--run-dir", tmp_path / "first", "--z-size", "7", "--kl-beta", "1,0.5,0.5", "--elbo", "meanfield")
    first = configs.pop()
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / CONFIG_FILE).write_text(first.to_json())  # what train.fit writes
    fit(tmp_path, "--config", tmp_path / "first" / CONFIG_FILE, "--run-dir", tmp_path / "second")
    second = configs.pop()
    assert second == first.replace(run_dir=str(tmp_path / "second"))


def test_an_option_overrides_the_config_file(configs, tmp_path):
    file = tmp_path / "mine.toml"
    file.write_text('levels = 2\nfactor = 4\nz_size = 32\nlr = 0.01\n')
    fit(tmp_path, "--config", file, "--z-size", "8", "--run-dir", tmp_path / "run")
    cfg = configs.pop()
    assert (cfg.levels, cfg.factor, cfg.z_size, cfg.lr) == (2, 4, 8, 0.01)
    assert cfg.h_size == Config().h_size  # a key the file leaves out: the field default


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_each_preset_file_loads_and_is_what_dataset_picks(name, configs, tmp_path):
    values = tomllib.loads(preset_file(name).read_text())
    cfg = read_config_file(preset_file(name)).validate()
    assert all(getattr(cfg, key) == value for key, value in values.items())
    args = [] if name == "demo" else ["--dataset", name]
    fit(tmp_path, *args, "--run-dir", tmp_path / "by-name")
    fit(tmp_path, "--config", preset_file(name), "--run-dir", tmp_path / "by-file")
    by_name, by_file = configs
    assert by_name == by_file.replace(run_dir=by_name.run_dir)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_value_has_its_reason_beside_it(name):
    """The presets are for reading and copying: each value has a comment on its line or opening its block."""
    explained = False  # inside a block of lines that a comment opens
    for line in preset_file(name).read_text().splitlines():
        explained = bool(line.strip()) and (explained or line.startswith("#"))
        if line.strip() and not line.startswith("#"):
            assert explained or "#" in line, f"{name}: {line!r} says not why"


# The official settings (tests/fixtures/official_configs.toml, transcribed by hand) under this project's names.
OFFICIAL_NAMES = {"levels": "levels", "tmp_abs_factor": "factor", "enc_dense_layers": "enc_dense_layers",
                  "enc_dense_embed_size": "enc_dense_size", "cell_min_stddev": "min_std", "dec_stddev": "dec_std",
                  "cell_stoch_size": "z_size", "cell_deter_size": "h_size", "cell_embed_size": "embed_size",
                  "seq_len": "seq_len", "channels": "channels", "lr": "lr", "batch_size": "batch_size",
                  "clip_grad_norm_by": "clip_norm", "open_loop_ctx": "context"}


@pytest.mark.parametrize("name,official_name", [("mmnist", "mmnist"), ("gqn", "mazes"), ("minerl", "minerl")])
def test_each_dataset_preset_is_the_official_config(name, official_name):
    """Every setting of the official config (its base file, then the dataset's file) is the preset's, and the
    dataset's test videos are as long as the official evaluation's sequences."""
    official = tomllib.loads((Path(__file__).parent / "fixtures" / "official_configs.toml").read_text())
    values = {**official["base"], **official[official_name]}
    eval_seq_len = values.pop("eval_seq_len")
    cfg = preset(name)
    assert {OFFICIAL_NAMES[key]: getattr(cfg, OFFICIAL_NAMES[key]) for key in values} == {
        OFFICIAL_NAMES[key]: value for key, value in values.items()}
    assert ARCHIVES[name].frames_per_video["test"] == eval_seq_len
    assert (cfg.kl_balance, cfg.free_nats, cfg.kl_beta) == (None, None, None)  # the official null KL shaping


def test_a_saved_config_round_trips_through_json():
    cfg = Config(kl_beta=[1.0, 0.5, 0.5], data_dir="d", free_nats=2.0)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_list_options_parse_to_the_field_type():
    hint = typing.get_type_hints(Config)["kl_beta"]
    assert cli_options.option_type(hint) is str
    assert cli_options.parse_setting("kl_beta", "1,2.5", hint) == [1.0, 2.5]
    assert cli_options.parse_setting("lr", 0.1, typing.get_type_hints(Config)["lr"]) == 0.1


def test_a_config_files_relative_program_path_is_read_from_the_current_folder_and_recorded_whole(configs, tmp_path,
                                                                                              monkeypatch):
    (tmp_path / "m.py").write_text("from pyro_cwvae.models.cwvae import model\n")
    (tmp_path / "c.toml").write_text('model = "m.py"\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = CliRunner().invoke(cli.app, ["fit", "--config", "../c.toml", "--trust-programs", "--run-dir", "r"])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: model = 'm.py' in --config ../c.toml: no such file (a relative path is read from the current "
        f"folder, {tmp_path / 'elsewhere'})")
    monkeypatch.chdir(tmp_path)
    fit(tmp_path, "--config", "c.toml", "--trust-programs", "--run-dir", "r")
    assert configs.pop().model == str(tmp_path.resolve() / "m.py")  # config.json names it from anywhere


@pytest.mark.parametrize("group", ["", "data", "classifier", "weights", "checkpoint"])
def test_help_at_80_columns_cuts_no_command_summary(group):
    result = CliRunner().invoke(cli.app, [group, "--help"] if group else ["--help"], terminal_width=80,
                                env={"COLUMNS": "80"})
    commands = result.output.split("Commands:")[1].strip("\n").splitlines()
    assert result.exit_code == 0 and len(commands) >= 1
    assert all(line.startswith("  ") and not line.rstrip().endswith(("...", "…")) for line in commands), commands


def test_help_at_80_columns_shows_every_option_name_whole():
    result = CliRunner().invoke(cli.app, ["fit", "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.output and "..." not in result.output
    for field in dataclasses.fields(Config):
        assert re.search(rf"--{field.name.replace('_', '-')}(?![\w-])", result.output), field.name
    assert "--no-deterministic" in result.output
