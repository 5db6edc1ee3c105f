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
step never waits for the device and can be captured in a CUDA graph (``training/step.py``). Its arithmetic is
that of torch's single-tensor Adam (``_single_tensor_adam``, not capturable), with its Python float scalars as
float64 tensors, so on a CPU it takes the same steps as ``torch.optim.Adam`` with eps reset each step, bit for bit
in float32 (tests/test_graph_step.py). It is written as foreach operations over a group's parameters, which share one
step count: on a GPU each is a kernel or two for all the parameters, where one parameter at a time took about 30
kernels each (2,880 for the 90 tensors of the mmnist networks, masked; now 300 operators, most of them the mask's
``torch.where``, and on a GPU about 90 kernels more: the addition of eps, one tensor to a list, runs tensor by
tensor). ``step(ok=...)`` applies the update only where ``ok`` holds, leaving the
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
                 masked: bool | None = None, together: bool | None = None):
        """``eps`` is Keras' epsilon hat (Keras' defaults: lr 1e-3, eps 1e-7). ``masked``: how ``step(ok=...)``
        skips. Masked, the update is computed and kept only where ``ok`` holds, never read on the host (capturable;
        the default for an ``ok`` on a CUDA device); else ``ok`` is read and the update taken in place, with half the
        memory traffic (the default on a CPU, where reading a value costs no wait). ``together``: update all the
        parameters of a group (of one device and dtype) in each foreach operation, a few kernels for all (the
        default on a GPU), or one parameter at a time, whose temporaries stay small (the default on a CPU); the
        arithmetic is the same."""
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        self.masked, self.together = masked, together

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
        for group in self.param_groups:  # a group's parameters share one step count (``_update``)
            counts = {float(self.state[p]["step"]) for p in group["params"] if "step" in self.state.get(p, {})}
            if len(counts) > 1:
                raise UserError(f"the optimizer state holds parameters of one group at different step counts "
                                f"({', '.join(f'{count:g}' for count in sorted(counts))}): KerasAdam steps a group "
                                "together")

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
            alike: dict[tuple, list[torch.Tensor]] = {}  # foreach operations take tensors of one device and dtype
            for param in params:
                alike.setdefault((param.device, param.dtype), []).append(param)
            for same in alike.values():
                together = same[0].device.type == "cuda" if self.together is None else self.together
                for batch in ([same] if together else [[param] for param in same]):
                    self._update(batch, group, ok)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict, ok: torch.Tensor | None) -> None:
        """``_single_tensor_adam``'s update with eps = eps_hat / sqrt(1 - beta2^t), in tensors, of ``params`` (one
        device and dtype, stepped together: one step count) as a few foreach operations: on a GPU a few kernels
        for all of them instead of a dozen or more for each, the same arithmetic."""
        states = [self.state[param] for param in params]
        for param, state in zip(params, states):
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        grads, step_t = [param.grad for param in params], states[0]["step"] + 1  # float32, as torch counts
        step = step_t.double()  # torch's Python float of the count, exactly
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = torch.full_like(step, group["lr"]).div_(bias_correction1)  # not lr / t: that is lr * (1 / t)
        bias_correction2_sqrt = torch.pow(bias_correction2, torch.full_like(step, 0.5))  # as Python's ** 0.5
        eps = torch.full_like(step, group["eps_hat"]).div_(bias_correction2.sqrt())
        # torch's float scalars meet the parameter's dtype in each operation: so do these (0-dim ones would promote)
        dtype = params[0].dtype
        neg_step_size, bias_correction2_sqrt, eps = (x.to(dtype) for x in (step_size.neg(), bias_correction2_sqrt, eps))
        exp_avgs, exp_avg_sqs = [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states]
        if ok is not None:  # new tensors, kept below only where ok holds
            exp_avgs, exp_avg_sqs = copies(exp_avgs), copies(exp_avg_sqs)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, bias_correction2_sqrt)
        torch._foreach_add_(denoms, [eps] * len(denoms))  # a list: foreach add of one tensor reads it on a CPU
        updates = torch._foreach_mul(exp_avgs, neg_step_size)  # addcdiv's param + value * t1 / t2, the sum last
        torch._foreach_div_(updates, denoms)
        steps = [state["step"] for state in states]
        if ok is None:
            torch._foreach_add_(params, updates)
            torch._foreach_copy_(steps, [step_t] * len(steps))
            return
        torch._foreach_add_(updates, params)
        torch._foreach_copy_(steps, [torch.where(ok, step_t, steps[0])] * len(steps))
        for olds, news in (([state["exp_avg"] for state in states], exp_avgs),
                           ([state["exp_avg_sq"] for state in states], exp_avg_sqs), (params, updates)):
            for old, new in zip(olds, news):
                torch.where(ok, new, old, out=old)


def copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """New tensors equal to ``tensors``, filled by one foreach operation (``torch._foreach_clone`` came in torch 2.12;
    ``_foreach_copy_`` is in every torch this project supports)."""
    new = [torch.empty_like(tensor) for tensor in tensors]
    torch._foreach_copy_(new, tensors)
    return new
