"""Adam as the reference's Keras Adam computes it: epsilon added before the step size's bias correction.

Keras (``tf.keras.optimizers.Adam``, the optimiser of the official code) takes step t as

    m_t = beta1 m_{t-1} + (1 - beta1) g_t,    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    w_t = w_{t-1} - lr sqrt(1 - beta2^t) / (1 - beta1^t) * m_t / (sqrt(v_t) + eps_hat)

(the "epsilon hat" form at the end of Section 2 of Kingma & Ba), while ``torch.optim.Adam`` takes

    w_t = w_{t-1} - lr / (1 - beta1^t) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps).

Multiplying the torch denominator by sqrt(1 - beta2^t) shows the two are the same update when
eps = eps_hat / sqrt(1 - beta2^t). With eps_hat 1e-4 that is 3.2e-3 at step 1 and 1.3e-4 at step 1000:
torch's Adam with a fixed eps of 1e-4 damps the early steps far less than the reference does.

``KerasAdam`` takes torch's form with that eps, written in tensor operations only: the step count is a tensor on
the parameter's device and the step-dependent scalars (bias corrections, step size, eps) are computed there, so a
step never waits for the device and can be captured in a CUDA graph (``training/step.py``). Its operations are
those of torch's single-tensor Adam (``_single_tensor_adam``, not capturable), with its Python float scalars as
float64 tensors, so on a CPU it takes the same steps as ``torch.optim.Adam`` with eps reset each step, bit for bit
in float32 (tests/test_graph_step.py). ``step(ok=...)`` applies the update only where ``ok`` holds, leaving the
weights and the whole optimizer state (step count included) as they were otherwise, without reading ``ok`` back
(on a CUDA device; on a CPU ``ok`` is read and a step either skipped or taken in place: ``masked``).
"""
from __future__ import annotations

import torch

from pyro_cwvae.errors import UserError


class KerasAdam(torch.optim.Optimizer):
    """Keras' Adam (epsilon hat), capturable. ``state_dict()`` holds what torch's Adam holds (per parameter:
    ``step``, ``exp_avg``, ``exp_avg_sq``; per group: ``lr``, ``betas``, ``eps`` and the Keras epsilon
    ``eps_hat``), so checkpoints written with torch's Adam or the earlier KerasAdam load and continue."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-7,
                 masked: bool | None = None):
        """``eps`` is Keras' epsilon hat (Keras' defaults: lr 1e-3, eps 1e-7). ``masked``: how ``step(ok=...)``
        skips. Masked, the update is computed and kept only where ``ok`` holds, never read on the host (capturable;
        the default for an ``ok`` on a CUDA device); else ``ok`` is read and the update taken in place, with half the
        memory traffic (the default on a CPU, where reading a value costs no wait)."""
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        self.masked = masked

    def __setstate__(self, state):
        """Restore the state (``load_state_dict``); a group saved without ``eps_hat`` keeps its eps as eps_hat."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("eps_hat", group["eps"])  # saved by torch's Adam, whose eps never changes

    def add_param_group(self, param_group: dict) -> None:
        """Add a group, recording its eps (Keras' epsilon hat) as ``eps_hat``."""
        param_group.setdefault("eps_hat", param_group.get("eps", self.defaults["eps"]))
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load as torch does, then move each step count to its parameter's device (torch's Adam keeps it on the
        CPU), where the capturable step reads it."""
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(param.device)

    @torch.no_grad()
    def step(self, closure=None, ok: torch.Tensor | None = None):
        """One Adam step of every parameter with a gradient; with ``ok`` (a 0-dim bool tensor) only where it holds."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if ok is not None and not (ok.is_cuda if self.masked is None else self.masked):
            if not bool(ok):
                return loss
            ok = None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            stepped = [bool(self.state.get(p)) for p in params]
            if any(stepped) and not all(stepped):  # structure only: no value is read from the device
                raise UserError("KerasAdam needs every parameter of a group stepped together, found parameters with "
                                "and without steps taken (a network used in only some training steps?)")
            for param in params:
                self._update(param, group, ok)
        return loss

    def _update(self, param: torch.Tensor, group: dict, ok: torch.Tensor | None) -> None:
        """``_single_tensor_adam``'s update of one parameter with eps = eps_hat / sqrt(1 - beta2^t), in tensors."""
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        grad, step_t = param.grad, state["step"] + 1  # float32, as torch counts
        step = step_t.double()  # torch's Python float of the count, exactly
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = torch.full_like(step, group["lr"]).div_(bias_correction1)  # not lr / t: that is lr * (1 / t)
        bias_correction2_sqrt = torch.pow(bias_correction2, torch.full_like(step, 0.5))  # as Python's ** 0.5
        eps = torch.full_like(step, group["eps_hat"]).div_(bias_correction2.sqrt())
        # torch's float scalars meet the parameter's dtype in each operation: so do these (0-dim ones would promote)
        neg_step_size, bias_correction2_sqrt, eps = (x.to(param.dtype) for x in (step_size.neg(), bias_correction2_sqrt,
                                                                                   eps))
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if ok is not None:  # new tensors, kept below only where ok holds
            exp_avg, exp_avg_sq = exp_avg.clone(), exp_avg_sq.clone()
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        update = exp_avg.mul(neg_step_size).div_(denom)  # addcdiv's param + value * t1 / t2, the sum last
        if ok is None:
            param.add_(update)
            state["step"].copy_(step_t)
            return
        for old, new in ((state["step"], step_t), (state["exp_avg"], exp_avg), (state["exp_avg_sq"], exp_avg_sq),
                         (param, update.add_(param))):
            torch.where(ok, new, old, out=old)
