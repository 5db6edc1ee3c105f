"""Run configs: the dataset presets use the analytic-KL ELBO of the official code unless the user says otherwise,
and the run's files record which ELBO was used."""
import dataclasses

import pytest
import xarray as xr

from pyro_cwvae.model.config import preset_file, tomllib
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.training.history import HISTORY
from pyro_cwvae.errors import UserError
from pyro_cwvae.training.run_config import new_run_config, resume_config
from pyro_cwvae.training.loop import fit
from tests.conftest import TINY


@pytest.mark.parametrize("dataset", ["mmnist", "gqn", "minerl", "kth"])
def test_dataset_presets_train_with_analytic_kls(dataset, tmp_path):
    cfg = new_run_config({"dataset": dataset, "run_dir": str(tmp_path / "run")})
    assert cfg.elbo == "meanfield"


def test_an_elbo_given_by_the_user_overrides_the_preset(tmp_path):
    cfg = new_run_config({"dataset": "mmnist", "elbo": "trace", "run_dir": str(tmp_path / "run")})
    assert cfg.elbo == "trace"


def test_the_demo_keeps_the_package_default_trace_elbo(tmp_path):
    assert "elbo" not in tomllib.loads(preset_file("demo").read_text())
    assert new_run_config({"run_dir": str(tmp_path / "run")}).elbo == "trace"


@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
def test_history_records_the_elbo(elbo, tmp_path):
    cfg = new_run_config({**TINY, "steps": 1, "checkpoint_every": 1, "elbo": elbo, "run_dir": str(tmp_path / "run")})
    fit(cfg, GeneratedMovingMNIST(), progress=False)
    with xr.open_dataset(tmp_path / "run" / HISTORY) as history:
        assert history.attrs["elbo"] == elbo


# What a resumed run may change: where and how fast it trains, how often it saves and is watched; never what it learns
# (the model, the data, the objective, the optimizer, the noise) nor how its previews are scored (their context).
MAY_CHANGE_ON_RESUME = {"steps", "device", "workers", "checkpoint_every", "data_dir", "run_dir", "precision", "compile",
                        "deterministic", "cuda_graph", "tensorboard", "preview_every"}


def another(value):
    """A value other than ``value`` (valid or not: a refused option is refused before the config is validated)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, 1.0]
    return "other" if value is not None else 1


def test_a_resumed_run_refuses_every_option_that_changes_what_it_learns(tmp_path):
    run = str(tmp_path / "run")
    fit(new_run_config({**TINY, "steps": 1, "checkpoint_every": 1, "run_dir": run}), GeneratedMovingMNIST(),
        progress=False)
    saved = resume_config({"run_dir": run})
    for field in dataclasses.fields(saved):
        value = another(getattr(saved, field.name))
        try:
            resume_config({"run_dir": run, field.name: value})
        except UserError as error:
            refused = "differs from the resumed run" in str(error)
        else:
            refused = False
        assert refused == (field.name not in MAY_CHANGE_ON_RESUME), (field.name, value)
