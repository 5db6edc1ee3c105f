"""Training: SVI lowers the loss, a resumed run equals an uninterrupted one, numeric failures stop cleanly."""
import textwrap
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import xarray as xr

from pyro_cwvae.training import checkpoint
from pyro_cwvae.training.checkpoint import _read as read, load_checkpoint
from pyro_cwvae.data import VideoDataset
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.training.history import HISTORY
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.errors import NumericalError
from pyro_cwvae.training.loop import fit


class FixedBatch(VideoDataset):
    """The same small batch at every step: SVI must fit it."""

    name, channels, num_test = "fixed", 1, 0

    def __init__(self):
        self.batch = GeneratedMovingMNIST().train_batch(0, 2, 8, 0)

    def train_batch(self, step, batch_size, seq_len, seed):
        return self.batch[:batch_size, :seq_len]

    def test_video(self, index):
        raise IndexError(index)


def test_svi_steps_lower_the_loss(tiny_cfg):
    cfg = tiny_cfg.replace(steps=40, lr=3e-3, elbo="meanfield", checkpoint_every=40, dec_std=0.1)
    history = fit(cfg, FixedBatch(), progress=False).history
    losses = np.array([row.loss for row in history.rows])
    assert np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[0] - 0.3 * abs(losses[0])


def test_kl_warmup_weights_the_kl_by_step_over_warmup_then_one(tiny_cfg, tmp_path):
    """--kl-warmup 4 weights the KL terms 1/4, 2/4, 3/4 at steps 1-3 (never 0) and 1 from step 4; the weight the
    history reports is the one applied: before any update, step 1 has a quarter of the KL of a run without it."""
    data, cfg = GeneratedMovingMNIST(), tiny_cfg.replace(elbo="meanfield", checkpoint_every=6)
    plain = fit(cfg.replace(steps=1, run_dir=str(tmp_path / "plain")), data, progress=False).history.rows[0]
    warm = fit(cfg.replace(steps=6, kl_warmup=4), data, progress=False).history.rows
    assert [row.kl_scale for row in warm] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warm[0].reconstruction == plain.reconstruction
    np.testing.assert_allclose(warm[0].kl, 0.25 * np.asarray(plain.kl), rtol=1e-6)


def test_the_history_records_the_gradient_norm_before_clipping(tiny_cfg):
    """Step 1's gradient norm, computed here from the run's seed, weights and batch without the training loop."""
    cfg, data = tiny_cfg.replace(steps=1, checkpoint_every=1, clip_norm=1e-3), FixedBatch()
    (row,) = fit(cfg, data, progress=False).history.rows
    pyro.set_rng_seed(cfg.seed)
    nets = CWVAENets(cfg)
    pyro.set_rng_seed(cfg.seed)  # the sampling noise, drawn after the weights
    video = torch.as_tensor(data.batch / 255.0, dtype=torch.float32)
    with pyro.validation_enabled(False):
        loss = elbo_terms(model, guide, video, nets, cfg).loss
    norm = torch.cat([grad.flatten() for grad in torch.autograd.grad(loss, list(nets.parameters()))]).norm()
    assert norm > 1e-3  # clipped in the step: the history keeps the norm before
    assert row.grad_norm == pytest.approx(norm.item(), rel=1e-5)


def test_resume_equals_an_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch):
    """With a KL warm-up that the resume interrupts: the resumed steps go on with its weights."""
    data = GeneratedMovingMNIST()
    straight = tiny_cfg.replace(steps=6, checkpoint_every=3, kl_warmup=5, run_dir=str(tmp_path / "straight"))
    fit(straight, data, progress=False)
    split = straight.replace(steps=3, run_dir=str(tmp_path / "split"))
    fit(split, data, progress=False)
    reads = []
    monkeypatch.setattr(checkpoint, "_read", lambda *args, **kw: reads.append(args[0]) or read(*args, **kw))
    fit(split.replace(steps=6), data, resume=True, progress=False)
    assert len(reads) == 1  # the checkpoint is read once, checked, then restored from
    monkeypatch.undo()

    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    for name, tensor in a["nets"].items():
        assert torch.equal(tensor, b["nets"][name]), name
    with xr.open_dataset(tmp_path / "straight" / HISTORY) as ha, xr.open_dataset(tmp_path / "split" / HISTORY) as hb:
        assert list(hb.step.values) == [1, 2, 3, 4, 5, 6]
        np.testing.assert_allclose(hb.kl_scale.values, [0.2, 0.4, 0.6, 0.8, 1.0, 1.0], rtol=1e-6)
        xr.testing.assert_equal(ha.drop_attrs(), hb.drop_attrs())


def test_resume_removes_the_temporary_files_of_killed_writes(tiny_cfg):
    data = GeneratedMovingMNIST()
    cfg = tiny_cfg.replace(steps=2)
    fit(cfg, data, progress=False)
    run = Path(cfg.run_dir)
    leftovers = [run / ".checkpoint.pt.a1b2c3.tmp", run / ".history.nc.d4e5f6.tmp"]  # atomic_path's naming
    unrelated = run / "notes.tmp"
    for path in [*leftovers, unrelated]:
        path.write_bytes(b"half a write")
    fit(cfg.replace(steps=3), data, resume=True, progress=False)
    assert not any(path.exists() for path in leftovers)
    assert unrelated.exists()


def test_run_directory_holds_config_checkpoint_and_history(tiny_cfg):
    result = fit(tiny_cfg, GeneratedMovingMNIST(), progress=False)
    run = result.run_dir
    assert (run / "config.json").read_text() == tiny_cfg.to_json()
    state = load_checkpoint(run)
    assert state["step"] == tiny_cfg.steps and state["config"] == tiny_cfg.to_dict()
    assert "def model(" in state["programs"]["model"]["source"]
    with xr.open_dataset(run / HISTORY) as history:
        assert history.kl.dims == ("step", "level") and list(history.level.values) == [1, 2]
        assert history.loss.attrs["units"] == "nats per frame"
        np.testing.assert_allclose(history.loss, history.reconstruction + history.kl.sum("level"), rtol=1e-5)
    assert not list(run.glob("*.tmp"))


NAN_AT_THIRD_CALL = textwrap.dedent("""
    from pyro_cwvae.models.cwvae import model as default_model
    calls = 0

    def model(video, nets, cfg, kl_scale=1.0, num_frames=None, batch_size=None):
        global calls
        calls += 1
        if calls == 3 and video is not None:
            video = video * float("nan")
        return default_model(video, nets, cfg, kl_scale, num_frames, batch_size)
""")


def test_nan_stops_with_step_and_term_and_keeps_the_checkpoint(tiny_cfg, tmp_path):
    variant = tmp_path / "nan_model.py"
    variant.write_text(NAN_AT_THIRD_CALL)
    cfg = tiny_cfg.replace(model=str(variant), steps=4, checkpoint_every=2)
    with pytest.raises(NumericalError, match="non-finite reconstruction at step 3"):
        fit(cfg, GeneratedMovingMNIST(), progress=False)
    assert load_checkpoint(cfg.run_dir)["step"] == 2


def test_bad_steps_can_be_skipped(tiny_cfg, tmp_path):
    variant = tmp_path / "nan_model.py"
    variant.write_text(NAN_AT_THIRD_CALL)
    cfg = tiny_cfg.replace(model=str(variant), steps=4, checkpoint_every=2)
    result = fit(cfg, GeneratedMovingMNIST(), max_bad_steps=1, progress=False)
    state = load_checkpoint(cfg.run_dir)
    assert result.step == state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["nets"].values())


def test_a_resumed_run_counts_the_steps_it_skipped_before(tiny_cfg, tmp_path):
    """--max-bad-steps limits the run, not each process: the variant fails its third step in each process, so
    resumed after step 4 it fails at step 7, the run's second bad step, and stops there."""
    variant = tmp_path / "nan_model.py"
    variant.write_text(NAN_AT_THIRD_CALL)
    cfg = tiny_cfg.replace(model=str(variant), steps=4, checkpoint_every=2)
    fit(cfg, GeneratedMovingMNIST(), max_bad_steps=1, progress=False)
    with pytest.raises(NumericalError, match="non-finite reconstruction at step 7"):
        fit(cfg.replace(steps=8), GeneratedMovingMNIST(), resume=True, max_bad_steps=1, progress=False)
    assert load_checkpoint(cfg.run_dir)["step"] == 6
    result = fit(cfg.replace(steps=10), GeneratedMovingMNIST(), resume=True, max_bad_steps=2, progress=False)
    assert result.step == 10  # from step 6: step 9 failed, the second of two allowed
    assert [row.step for row in result.history.rows if not np.isfinite(row.loss)] == [3, 9]


def test_checkpoint_of_another_model_is_refused_with_the_mismatch(tiny_cfg):
    from pyro_cwvae.training.checkpoint import restore_nets
    from pyro_cwvae.errors import UserError
    from pyro_cwvae.model.nets import CWVAENets

    fit(tiny_cfg, GeneratedMovingMNIST(), progress=False)
    state = load_checkpoint(tiny_cfg.run_dir)
    with pytest.raises(UserError, match="do not fit the configured model: .*size mismatch"):
        restore_nets(CWVAENets(tiny_cfg.replace(z_size=5)), state)
    with pytest.raises(UserError, match="do not fit the configured model"):
        restore_nets(CWVAENets(tiny_cfg.replace(levels=3)), state)
    with pytest.raises(UserError, match="1 channel"):
        fit(tiny_cfg.replace(channels=3), GeneratedMovingMNIST(), resume=True, progress=False)


@pytest.mark.parametrize("seq_len,trained", [(2, False), (4, True)])
def test_the_top_transition_trains_only_when_a_sequence_holds_two_top_steps(tiny_cfg, seq_len, trained):
    """With one top step per sequence the top level's GRU reads zeros (no previous state, nothing above), so its
    input and recurrent weights get no gradient: the config warns about exactly that case."""
    cfg = tiny_cfg.replace(seq_len=seq_len, steps=3)  # 2 levels, k 2: a top step every 2 frames
    start = CWVAENets(cfg).state_dict()  # the seed fixes the initial weights: fit starts from these
    result = fit(cfg, GeneratedMovingMNIST(), progress=False)
    top = "levels.1.transition."
    weights = [top + "inp.weight", top + "gru.weight_ih", top + "gru.weight_hh"]
    moved = [not torch.equal(result.nets.state_dict()[name], start[name]) for name in weights]
    assert moved == [trained] * 3
    assert not torch.equal(result.nets.state_dict()[top + "gru.bias_hh"], start[top + "gru.bias_hh"])  # it learns
    assert bool(cfg.warnings()) is not trained
