"""KerasAdam against a NumPy transcription of Keras' Adam update ("epsilon hat"), and its resume; the skip of a
step with ``ok`` false."""
import io
import math

import numpy as np
import pytest
import torch

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.training.optim import KerasAdam

LR, BETA1, BETA2, EPS_HAT = 0.01, 0.9, 0.999, 1e-4
# Gradients of the order of eps_hat, so the placement of epsilon changes the update by far more than rounding.
GRADS = [np.array([[1e-4, -3e-4, 2e-3], [0.5, -5e-5, 1e-3]]), np.array([[-2e-4, 1e-4, 1e-3], [0.2, 4e-5, -2e-3]])]
W0 = np.array([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]])
W0.setflags(write=False)  # the optimizers update their own copies



def keras_adam(w, grads, eps=EPS_HAT):
    """Keras' Adam, from its update rule: lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t), w -= lr_t m / (sqrt(v) + eps)."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        lr_t = LR * np.sqrt(1 - BETA2 ** t) / (1 - BETA1 ** t)
        m = BETA1 * m + (1 - BETA1) * g
        v = BETA2 * v + (1 - BETA2) * g * g
        w = w - lr_t * m / (np.sqrt(v) + eps)
    return w


def take_steps(optimizer, params, grads):
    """Set each parameter's gradient to its row of each gradient array and step once per array."""
    for g in grads:
        for p, row in zip(params, g):
            p.grad = torch.as_tensor(row, dtype=p.dtype)
        optimizer.step()


def rows_as_params(w):
    return [torch.nn.Parameter(torch.tensor(row, dtype=torch.float64)) for row in w]


def stacked(params):
    return torch.stack([p.detach() for p in params]).numpy()


def test_keras_adam_matches_numpy_transcription_of_keras_update():
    params = rows_as_params(W0)
    take_steps(KerasAdam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS_HAT), params, GRADS)
    np.testing.assert_allclose(stacked(params), keras_adam(W0, GRADS), rtol=1e-12, atol=1e-15)


def test_torch_adam_with_fixed_eps_differs_from_keras_update():
    """The transcription tells the two apart: a KerasAdam that fell back to a fixed eps would fail the test above."""
    params = rows_as_params(W0)
    take_steps(torch.optim.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS_HAT), params, GRADS)
    assert np.abs(stacked(params) - keras_adam(W0, GRADS)).max() > 1e-3


def test_keras_adam_float32_matches_to_float32_precision():
    params = [torch.nn.Parameter(torch.tensor(row, dtype=torch.float32)) for row in W0]
    take_steps(KerasAdam(params, lr=LR, eps=EPS_HAT), params, GRADS)
    np.testing.assert_allclose(stacked(params), keras_adam(W0, GRADS), rtol=1e-6, atol=1e-7)


def through_bytes(state_dict):
    """A state dict as a checkpoint gives it back: saved and loaded, sharing nothing with the original."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_keras_adam_resumes_bit_for_bit_from_state_dict():
    grads = GRADS + [g[::-1, ::-1] * 0.3 for g in GRADS] + GRADS
    params = rows_as_params(W0)
    optimizer = KerasAdam(params, lr=LR, eps=EPS_HAT)
    take_steps(optimizer, params, grads[:3])
    saved, saved_params = through_bytes(optimizer.state_dict()), [p.detach().clone() for p in params]
    take_steps(optimizer, params, grads[3:])

    resumed_params = [torch.nn.Parameter(p) for p in saved_params]
    resumed = KerasAdam(resumed_params, lr=LR, eps=0.5)
    resumed.load_state_dict(saved)  # restores the groups' settings, eps_hat with lr, as torch does
    take_steps(resumed, resumed_params, grads[3:])
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params))
    assert resumed.param_groups[0]["eps_hat"] == EPS_HAT


def test_keras_adam_takes_over_a_torch_adam_state_dict_with_its_eps_as_eps_hat():
    """A checkpoint written with torch's Adam continues the Keras way from the step it reached."""
    params = rows_as_params(W0)
    torch_adam = torch.optim.Adam(params, lr=LR, eps=EPS_HAT)
    take_steps(torch_adam, params, GRADS[:1])
    saved = torch_adam.state_dict()
    continued = rows_as_params(stacked(params))  # torch's Adam with the Keras eps of step 2: the expected step
    expected = torch.optim.Adam(continued, lr=LR, eps=EPS_HAT / np.sqrt(1 - BETA2 ** 2))
    expected.load_state_dict(through_bytes(saved))  # torch's Adam steps the loaded count in place: a copy each
    expected.param_groups[0]["eps"] = EPS_HAT / np.sqrt(1 - BETA2 ** 2)
    take_steps(expected, continued, GRADS[1:])
    keras = KerasAdam(params, lr=LR, eps=0.5)
    keras.load_state_dict(through_bytes(saved))
    take_steps(keras, params, GRADS[1:])
    assert keras.param_groups[0]["eps_hat"] == EPS_HAT
    assert float(keras.state[params[0]]["step"]) == 2.0
    np.testing.assert_allclose(stacked(params), stacked(continued), rtol=1e-14, atol=0)


def test_keras_adam_refuses_a_group_whose_parameters_have_taken_different_step_counts():
    params = rows_as_params(W0)
    optimizer = KerasAdam(params, lr=LR, eps=EPS_HAT)
    take_steps(optimizer, params[:1], GRADS[:1])  # the second parameter has no gradient: Adam skips it
    with pytest.raises(UserError, match="steps"):
        take_steps(optimizer, params, GRADS[1:])


@pytest.mark.parametrize("masked", [True, False], ids=["masked on the device", "skipped on the host"])
def test_a_step_with_ok_false_leaves_weights_and_state_as_they_were(masked):
    params = rows_as_params(W0)
    optimizer = KerasAdam(params, lr=LR, eps=EPS_HAT, masked=masked)
    take_steps(optimizer, params, GRADS[:1])
    before = stacked(params), {key: value.clone() for key, value in optimizer.state[params[0]].items()}
    for p, row in zip(params, GRADS[1]):
        p.grad = torch.as_tensor(row * np.nan, dtype=p.dtype)
    optimizer.step(ok=torch.tensor(False))
    assert np.array_equal(stacked(params), before[0])
    assert all(torch.equal(value, before[1][key]) for key, value in optimizer.state[params[0]].items())
    take_steps(optimizer, params, GRADS[1:])  # and the next good step is Keras' step 2
    np.testing.assert_allclose(stacked(params), keras_adam(W0, GRADS), rtol=1e-12, atol=1e-15)


def test_the_masked_step_takes_the_in_place_steps_bit_for_bit():
    """The capturable update (new tensors kept where ``ok`` holds) and the in-place one are the same arithmetic."""
    runs = []
    for masked in (True, False):
        params = rows_as_params(W0)
        optimizer = KerasAdam(params, lr=LR, eps=EPS_HAT, masked=masked)
        for i, row in enumerate(GRADS + GRADS):  # four steps
            for p, g in zip(params, row):
                p.grad = torch.as_tensor(g, dtype=p.dtype)
            optimizer.step(ok=torch.tensor(i != 1))  # the second step skipped
        runs.append((stacked(params), [state["exp_avg_sq"].clone() for state in optimizer.state.values()]))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "in place"])
def test_all_parameters_together_take_the_one_by_one_steps_bit_for_bit(tiny_cfg, masked):
    """The foreach update of a whole group at once (a GPU's default) and one parameter at a time (a CPU's), on the
    parameters of the networks (many shapes), with a skipped step among them."""
    runs = []
    for together in (True, False):
        torch.manual_seed(0)
        params = list(CWVAENets(tiny_cfg).parameters())
        optimizer = KerasAdam(params, lr=1e-2, eps=1e-4, masked=masked, together=together)
        generator = torch.Generator().manual_seed(1)
        for step in range(4):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator) * (math.nan if step == 2 else 1.0)
            optimizer.step(ok=torch.tensor(step != 2))
        runs.append([p.detach().clone() for p in params] + [value for p in params
                                                           for value in optimizer.state[p].values()])
    assert len(runs[0]) == 4 * len(params) and all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_state_whose_parameters_have_different_step_counts_is_refused_on_load():
    params = rows_as_params(W0)
    torch_adam = torch.optim.Adam(params, lr=LR)
    take_steps(torch_adam, params, GRADS)
    saved = through_bytes(torch_adam.state_dict())
    saved["state"][1]["step"] = torch.tensor(5.0)  # torch's Adam counts each parameter's steps apart
    with pytest.raises(UserError, match="different step counts \\(2, 5\\)"):
        KerasAdam(rows_as_params(W0), lr=LR).load_state_dict(saved)


def test_a_state_dict_of_the_earlier_keras_adam_continues_with_eps_hat():
    """The KerasAdam of earlier checkpoints saved torch's per-step eps in ``eps``, beside ``eps_hat``: a resume
    steps with ``eps_hat``."""
    params = rows_as_params(W0)
    optimizer = KerasAdam(params, lr=LR, eps=EPS_HAT)
    take_steps(optimizer, params, GRADS)
    saved = optimizer.state_dict()
    saved["param_groups"][0]["eps"] = EPS_HAT / math.sqrt(1 - BETA2 ** 2)  # as the earlier version left it
    resumed = KerasAdam(params, lr=LR, eps=EPS_HAT)
    resumed.load_state_dict(saved)
    third = [g * 0.5 for g in GRADS[:1]]
    take_steps(resumed, params, third)
    np.testing.assert_allclose(stacked(params), keras_adam(W0, GRADS + third), rtol=1e-12, atol=1e-15)


def test_parameter_groups_keep_their_own_eps_as_eps_hat():
    first, second = rows_as_params(W0)
    optimizer = KerasAdam([{"params": [first], "eps": 1e-3}, {"params": [second]}], lr=LR, eps=EPS_HAT)
    take_steps(optimizer, [first, second], GRADS)
    np.testing.assert_allclose(first.detach().numpy(), keras_adam(W0[0], [g[0] for g in GRADS], eps=1e-3),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(second.detach().numpy(), keras_adam(W0[1], [g[1] for g in GRADS]),
                               rtol=1e-12, atol=1e-15)


def test_a_group_of_float32_and_float64_parameters_steps_each_in_its_own_precision():
    """Together, as a GPU steps a group, so that the foreach operations could mix them."""
    low = torch.nn.Parameter(torch.tensor(W0[0], dtype=torch.float32))
    high = torch.nn.Parameter(torch.tensor(W0[1], dtype=torch.float64))
    take_steps(KerasAdam([low, high], lr=LR, eps=EPS_HAT, together=True), [low, high], GRADS)
    np.testing.assert_allclose(high.detach().numpy(), keras_adam(W0[1], [g[1] for g in GRADS]),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(low.detach().numpy(), keras_adam(W0[0], [g[0] for g in GRADS]), rtol=1e-6, atol=1e-7)


def test_float64_steps_equal_torch_adam_with_the_keras_eps_bit_for_bit():
    """lr / bias_correction1, as torch's Adam divides (lr * (1 / bias_correction1) rounds differently at about a
    third of the steps; small weights, so that a rounding of the update shows in the weight)."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(2, 500, generator=generator, dtype=torch.float64) * 1e-3
    ours, theirs = rows_as_params(start.numpy()), rows_as_params(start.numpy())
    keras = KerasAdam(ours, lr=LR, eps=EPS_HAT)
    adam = torch.optim.Adam(theirs, lr=LR, eps=EPS_HAT, foreach=False)
    for t in range(1, 21):
        grads = [torch.randn(2, 500, generator=generator, dtype=torch.float64).numpy()]
        take_steps(keras, ours, grads)
        adam.param_groups[0]["eps"] = EPS_HAT / math.sqrt(1 - BETA2 ** t)
        take_steps(adam, theirs, grads)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_the_state_holds_what_torch_adam_holds_with_its_dtypes():
    """So that a checkpoint's optimizer state reads as torch's Adam's (its step count a float32 tensor)."""
    ours, theirs = rows_as_params(W0), rows_as_params(W0)
    keras, adam = KerasAdam(ours, lr=LR), torch.optim.Adam(theirs, lr=LR)
    take_steps(keras, ours, GRADS[:1])
    take_steps(adam, theirs, GRADS[:1])
    for p, q in zip(ours, theirs):
        assert {k: v.dtype for k, v in keras.state[p].items()} == {k: v.dtype for k, v in adam.state[q].items()}


def test_a_cpu_steps_one_parameter_at_a_time_by_default(monkeypatch):
    """On a CPU the temporaries of all parameters at once cost more than the launches they save."""
    lerp, calls = torch._foreach_lerp_, []
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *args: calls.append(len(args[0])) or lerp(*args))
    params = rows_as_params(W0)
    take_steps(KerasAdam(params, lr=LR), params, GRADS[:1])
    assert calls == [1, 1]
