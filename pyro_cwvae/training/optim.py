"""Adam as the reference's Keras Adam computes it: epsilon added before the step size's bias correction.

Keras (``tf.keras.optimizers.Adam``, the optimiser of the official code) takes step t as

    m_t = beta1 m_{t-1} + (1 - beta1) g_t,    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    w_t = w_{t-1} - lr sqrt(1 - beta2^t) / (1 - beta1^t) * m_t / (sqrt(v_t) + eps_hat)

(the "epsilon hat" form at the end of Section 2 of Kingma & Ba), while ``torch.optim.Adam`` takes

    w_t = w_{t-1} - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps).

Multiplying the torch denominator by sqrt(1 - beta2^t) shows the two are the same update when
eps = eps_hat / sqrt(1 - beta2^t). With eps_hat 1e-4 that is 3.2e-3 at step 1 and 1.3e-4 at step 1000:
torch's Adam with a fixed eps of 1e-4 damps the early steps far less than the reference does.
"""
from __future__ import annotations

import math

import torch

from pyro_cwvae.errors import UserError


class KerasAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose ``eps`` is Keras' epsilon hat: before each step, every param group's torch ``eps`` is
    set from the step about to be taken (eps_hat / sqrt(1 - beta2^t)), then Adam's own step (single-tensor, foreach or
    fused) runs unchanged. The Keras epsilon is kept in each group as ``eps_hat`` and the step count is read from Adam's
    per-parameter ``step`` state, so both travel with ``state_dict()`` and a resumed optimizer continues bit for bit."""

    def __init__(self, params, lr: float = 1e-3, eps: float = 1e-7, **kwargs):
        """``eps`` is Keras' epsilon hat (Keras' defaults: lr 1e-3, eps 1e-7); other options as ``torch.optim.Adam``."""
        super().__init__(params, lr=lr, eps=eps, **kwargs)

    def __setstate__(self, state):
        """Restore the state (``load_state_dict``); a group saved without ``eps_hat`` keeps its eps as eps_hat."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("eps_hat", group["eps"])  # saved by torch's Adam, whose eps never changes

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as torch's Adam does, recording its eps (Keras' epsilon hat) as ``eps_hat``: group['eps']
        changes every step."""
        param_group.setdefault("eps_hat", param_group.get("eps", self.defaults["eps"]))
        super().add_param_group(param_group)

    def step(self, closure=None):
        """Set each group's torch eps for the step about to be taken, then take Adam's step."""
        loss = None
        if closure is not None:  # the gradients must exist before the step count is read
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            step = self._next_step(group)
            if step is not None:
                group["eps"] = group["eps_hat"] / math.sqrt(1.0 - group["betas"][1] ** step)
        super().step()
        return loss

    def _next_step(self, group: dict) -> int | None:
        """The 1-based step Adam is about to take on the group's parameters that have gradients (None if none)."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None
        steps = [self.state[p]["step"] for p in params if self.state.get(p)]
        # one read of all counts: fused or capturable Adam keeps them on the device, and each read waits for it
        taken = set(torch.stack(steps).tolist()) if steps else set()
        if len(steps) < len(params):
            taken.add(0.0)  # parameters not stepped yet
        if len(taken) > 1:
            raise UserError(f"KerasAdam needs every parameter of a group stepped together, found {sorted(taken)} steps"
                            " taken (a network used in only some training steps?)")
        return int(taken.pop()) + 1
