"""One prior step and one posterior step of a level (pyro_cwvae/model/nets.py Transition, Posterior) against NumPy
transcriptions of the official cells.py (``_prior``, ``_posterior``) with fixed seeded weights in Keras' layouts.

The weights are drawn as Keras stores them (Dense kernel (in, out); GRU kernel and recurrent kernel with the
gates in Keras' order [update z | reset r | candidate h], bias (2, 3 units) for reset_after=True) and written
into the PyTorch modules through the documented layout of ``nn.GRUCell`` (weight_ih = [W_ir; W_iz; W_in]), so a
wrong gate order, a reset gate on the wrong term or a misplaced 0.54 shows up as a wrong number.
"""
import numpy as np
import pytest
import torch

from pyro_cwvae.model.nets import FEATURES, Posterior, Transition

Z, H, EMBED, MIN_STD = 3, 5, 4, 0.05  # min_std far above rounding, so adding it is visible
RTOL, ATOL = 1e-6, 1e-7  # the modules return float32


# ------------------------------------------------------------------------ NumPy transcription of cells.py


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0.0, x)


def dense(x, layer, activation=None):
    """tfkl.Dense: activation(x @ kernel + bias)."""
    y = x @ layer["kernel"] + layer["bias"]
    return y if activation is None else activation(y)


def keras_gru(x, h, gru):
    """tfkl.GRUCell (reset_after=True): gates split [z | r | h] along the kernel's columns."""
    x_z, x_r, x_h = np.split(x @ gru["kernel"] + gru["bias"][0], 3, axis=-1)
    h_z, h_r, h_h = np.split(h @ gru["recurrent_kernel"] + gru["bias"][1], 3, axis=-1)
    z = sigmoid(x_z + h_z)
    r = sigmoid(x_r + h_r)
    candidate = np.tanh(x_h + r * h_h)
    return z * h + (1 - z) * candidate


def official_prior(w, sample, det_state, context):
    """cells.py ``_prior``: (det_out, mean, stddev)."""
    hl = dense(np.concatenate([sample, context], -1), w["prior_h1_dense"], relu)
    det_out = keras_gru(hl, det_state, w["gru"])
    hl = dense(det_out, w["prior_h2_dense"], relu)
    mean = dense(hl, w["prior_mean_dense"])
    stddev = dense(hl + 0.54, w["prior_stddev_dense"], softplus) + MIN_STD
    return det_out, mean, stddev


def official_posterior(w, det_out, obs_inputs):
    """cells.py ``_posterior`` after its ``_prior`` call: (mean, stddev)."""
    hl = dense(np.concatenate([det_out, obs_inputs], -1), w["posterior_h1_dense"], relu)
    hl = dense(hl, w["posterior_h2_dense"], relu)
    mean = dense(hl, w["posterior_mean_dense"])
    stddev = dense(hl + 0.54, w["posterior_stddev_dense"], softplus) + MIN_STD
    return mean, stddev


# ------------------------------------------------------------------ fixed weights and the PyTorch layout


def keras_weights(seed: int) -> dict:
    """Seeded weights of one level's cell, as Keras holds them (scaled to keep every unit off saturation)."""
    rng = np.random.default_rng(seed)

    def layer(inputs, units):
        return {"kernel": rng.normal(0, 1 / np.sqrt(inputs), (inputs, units)), "bias": rng.normal(0, 0.3, units)}

    gru = {"kernel": rng.normal(0, 1 / np.sqrt(EMBED), (EMBED, 3 * H)),
           "recurrent_kernel": rng.normal(0, 1 / np.sqrt(H), (H, 3 * H)), "bias": rng.normal(0, 0.3, (2, 3 * H))}
    return {"prior_h1_dense": layer(2 * Z + H, EMBED), "gru": gru, "prior_h2_dense": layer(H, EMBED),
            "prior_mean_dense": layer(EMBED, Z), "prior_stddev_dense": layer(EMBED, Z),
            "posterior_h1_dense": layer(H + FEATURES, EMBED), "posterior_h2_dense": layer(EMBED, EMBED),
            "posterior_mean_dense": layer(EMBED, Z), "posterior_stddev_dense": layer(EMBED, Z)}


def load_dense(linear: torch.nn.Linear, layer: dict) -> None:
    linear.weight.copy_(torch.from_numpy(layer["kernel"].T))
    linear.bias.copy_(torch.from_numpy(layer["bias"]))


def torch_gates(keras: np.ndarray) -> torch.Tensor:
    """Keras columns [z | r | h] -> PyTorch rows [r; z; n]."""
    z, r, h = np.split(keras, 3, axis=-1)
    return torch.from_numpy(np.concatenate([r, z, h], axis=-1).T)


def load_cell(transition: Transition, posterior: Posterior, w: dict) -> None:
    gru = transition.gru
    gru.weight_ih.copy_(torch_gates(w["gru"]["kernel"]))
    gru.weight_hh.copy_(torch_gates(w["gru"]["recurrent_kernel"]))
    gru.bias_ih.copy_(torch_gates(w["gru"]["bias"][0]))
    gru.bias_hh.copy_(torch_gates(w["gru"]["bias"][1]))
    for linear, name in ((transition.inp, "prior_h1_dense"), (transition.hidden, "prior_h2_dense"),
                         (transition.head.loc, "prior_mean_dense"), (transition.head.scale, "prior_stddev_dense"),
                         (posterior.hidden1, "posterior_h1_dense"), (posterior.hidden2, "posterior_h2_dense"),
                         (posterior.head.loc, "posterior_mean_dense"),
                         (posterior.head.scale, "posterior_stddev_dense")):
        load_dense(linear, w[name])


@pytest.fixture
def cell(tiny_cfg):
    """A level's Transition and Posterior in float64 with the weights of ``keras_weights(0)``, and those weights."""
    cfg = tiny_cfg.replace(z_size=Z, h_size=H, embed_size=EMBED, min_std=MIN_STD)
    transition, posterior = Transition(cfg).double(), Posterior(cfg).double()
    w = keras_weights(0)
    with torch.no_grad():
        load_cell(transition, posterior, w)
    return transition, posterior, w


def inputs(seed: int, batch: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {"sample": rng.normal(size=(batch, Z)), "det_state": rng.normal(0, 0.5, (batch, H)),
            "context": rng.normal(size=(batch, Z + H)), "obs": rng.normal(0, 0.1, (batch, FEATURES))}


def tensors(*arrays):
    return [torch.from_numpy(a) for a in arrays]


@torch.no_grad()
def test_prior_step_matches_official_cells(cell):
    transition, _, w = cell
    x = inputs(1)
    det_out, mean, stddev = official_prior(w, x["sample"], x["det_state"], x["context"])
    z_prev, h_prev, z_above, h_above = tensors(x["sample"], x["det_state"], x["context"][:, :Z], x["context"][:, Z:])
    h = transition.deterministic((z_prev, h_prev), (z_above, h_above))
    torch.testing.assert_close(h.double(), torch.from_numpy(det_out), rtol=RTOL, atol=ATOL)
    loc, scale = transition(torch.from_numpy(det_out))
    torch.testing.assert_close(loc.double(), torch.from_numpy(mean), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(scale.double(), torch.from_numpy(stddev), rtol=RTOL, atol=ATOL)
    assert np.abs(det_out - x["det_state"]).min() > 1e-3 and np.all(stddev > 2 * MIN_STD)  # nothing degenerate


@torch.no_grad()
def test_posterior_step_matches_official_cells(cell):
    _, posterior, w = cell
    x = inputs(2)
    det_out, _, _ = official_prior(w, x["sample"], x["det_state"], x["context"])
    mean, stddev = official_posterior(w, det_out, x["obs"])
    loc, scale = posterior(*tensors(det_out, x["obs"]))
    torch.testing.assert_close(loc.double(), torch.from_numpy(mean), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(scale.double(), torch.from_numpy(stddev), rtol=RTOL, atol=ATOL)
    assert np.all(np.abs(mean) > 1e-3) and np.all(stddev > 2 * MIN_STD)
