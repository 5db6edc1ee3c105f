"""Data-parallel training under torchrun with the gloo backend on CPU.

Two processes must keep identical weights, and match one process that averages the gradients of the two
shards of every global batch, each shard's noise drawn from that rank's random stream.
"""
import os
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch

from pyro_cwvae.training.checkpoint import load_checkpoint
from pyro_cwvae.model.config import Config
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.training.optim import KerasAdam
from tests.conftest import TINY

STEPS, BATCH, RANKS = 3, 4, 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

WORKER = textwrap.dedent("""
    import sys, torch
    from pyro_cwvae.model.config import Config
    from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
    from pyro_cwvae.training.loop import fit
    cfg = Config(**{config!r})
    result = fit(cfg, GeneratedMovingMNIST(), progress=False)
    torch.save(result.nets.state_dict(), f"{{cfg.run_dir}}/rank{{result.rank}}.pt")
""")


def torchrun(*args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}", *args]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def single_process_emulation(cfg: Config) -> dict:
    """One process doing what the ranks do together: average the gradients of the shards, then one Adam step."""
    pyro.set_rng_seed(cfg.seed)
    nets = CWVAENets(cfg)
    optimizer = KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps)  # the optimizer of training
    streams = []
    for rank in range(RANKS):
        pyro.set_rng_seed(cfg.seed + rank)
        streams.append(torch.get_rng_state())
    data, rows = GeneratedMovingMNIST(), BATCH // RANKS
    for step in range(STEPS):
        batch = torch.from_numpy(data.train_batch(step, BATCH, cfg.seq_len, cfg.seed)).float() / 255
        optimizer.zero_grad()
        for rank in range(RANKS):
            torch.set_rng_state(streams[rank])
            loss = elbo_terms(model, guide, batch[rank * rows:(rank + 1) * rows], nets, cfg).loss / RANKS
            loss.backward()
            streams[rank] = torch.get_rng_state()
        torch.nn.utils.clip_grad_norm_(nets.parameters(), cfg.clip_norm)
        optimizer.step()
    return nets.state_dict()


@pytest.mark.slow
def test_two_ranks_keep_identical_weights_and_match_one_process(tmp_path):
    cfg = Config(**{**TINY, "steps": STEPS, "batch_size": BATCH, "checkpoint_every": 1}, run_dir=str(tmp_path / "ddp"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(config=cfg.to_dict()))
    torchrun(str(script))
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(RANKS)]
    expected = single_process_emulation(cfg)
    for name, tensor in ranks[0].items():
        assert torch.equal(tensor, ranks[1][name]), name
        assert torch.allclose(tensor, expected[name], rtol=1e-4, atol=1e-6), name
    assert load_checkpoint(tmp_path / "ddp")["step"] == STEPS

    # Resume under torchrun through the command line: 2 steps, then --resume to 3, ends where the straight 3-step run
    # above ended (the same config, read from a file; --resume reads the run's own).
    config = tmp_path / "config.json"
    config.write_text(cfg.to_json())
    resumed = ["-m", "pyro_cwvae", "fit", "--run-dir", str(tmp_path / "resumed"), "--quiet"]
    torchrun(*resumed, "--config", str(config), "--steps", "2")
    torchrun(*resumed, "--steps", str(STEPS), "--resume")
    a, b = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == STEPS and len(b["rng"]) == RANKS
    for name, tensor in a["nets"].items():
        assert torch.equal(tensor, b["nets"][name]), name
