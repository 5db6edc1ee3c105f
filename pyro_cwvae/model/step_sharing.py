"""Sharing the GRU steps of the guide and the model: ``with sharing_steps(nets): ...``, counted by ``step_counts``.

Traced together (the guide first, then the model replayed on the guide's samples), the two programs take each
step h_t^l = GRU(h_{t-1}^l, [z_{t-1}^l, s_t^{l+1}]) twice on the same inputs. Inside a block, each ``Transition``
of ``nets`` returns the first result of a step taken again, with its autograd graph, so each h_t^l is computed once,
as a hand-written CW-VAE would: the ELBO and its gradients are unchanged. ``nets.initial_state`` hands out the same
tensors within a block, so that first steps are shared too. Networks without ``Transition`` modules share nothing.

The prior head p(z_t^l | h_t^l) (``Transition.forward``) is then asked for, step by step, by the model, of h's
that all exist already: the first time it is asked for one of the h's a transition took in the block, it is
computed for all the h's taken alike (the same grad mode, autocast state, weights and shape: ``Block.head_key``) in
one batch of rows, and each step gets its row (``Block.prior``), as a hand-written CW-VAE computes the priors of a
level: a few large kernels instead of a dozen small ones a step, the same values up to the order of additions. A
head is computed alone for an h not in such a batch or edited in place since, for a ``Transition`` subclass with
its own ``forward``, for a head whose rows would meet (batch norm in training mode or without running statistics)
or that draws noise in training mode, and where the head's outputs are not rows (a scale shared by all rows).
The rows handed out are views of one batch: a program edits them out of place.

A step is reused only if all of these are unchanged (``step_key``): the transition, the identity and version
(``tensor._version``, bumped by every in-place edit) of each input tensor, the grad mode (an h computed under
``torch.no_grad()`` has no graph to hand on), the autocast state, and the versions of the transition's parameters
(an optimizer step inside a block). Entries keep their inputs alive, so no id is reused while they exist. A
transition holding a stochastic layer in training mode never shares, nor do inference tensors (no version
counter). Changes through ``.data`` and fused optimizers (``fused=True``) bump no version: make them outside a block.

The modules join a block by a change of class (to a subclass that looks the step up) and leave it at its end; the
entries are forgotten at the end of every block, nested ones too, and a copy (deepcopy, pickle) is of the plain
class: nothing outlives one ELBO evaluation or rollout.
"""
from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from pyro_cwvae.model.nets import State, Transition

STOCHASTIC_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                     nn.RReLU)  # layers that draw random numbers in training mode
BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)  # layers whose rows meet in training mode (or without running stats)

COUNTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # nets -> {"hits", "misses"} since built
OPEN: dict[int, "Block"] = {}  # id of the networks of an open block -> the block
BLOCKS: dict[int, "Block"] = {}  # id of a module sharing in a block -> the block


def step_counts(nets: nn.Module) -> dict[str, int]:
    """GRU steps reused (hits) and taken (misses) inside blocks since ``nets`` was built: under ``elbo_terms``
    one miss (guide) and one hit (model) per latent site."""
    return dict(COUNTS.get(nets, {"hits": 0, "misses": 0}))


@contextmanager
def sharing_steps(nets: nn.Module) -> Iterator[None]:
    """Within this block a GRU step taken again on the same inputs returns its first result."""
    block = OPEN.get(id(nets)) or Block(nets)
    block.depth += 1
    try:
        yield
    finally:
        block.entries.clear()
        block.taken.clear()
        block.priors.clear()
        block.depth -= 1
        if not block.depth:
            block.leave()


class Block:
    """The steps shared in one (outermost) block, and what their keys read, collected once: walking the modules
    at every step would cost more than a small GRU step."""

    def __init__(self, nets: nn.Module):
        self.nets, self.entries, self.depth = nets, {}, 0
        self.taken: dict[tuple, list[torch.Tensor]] = {}  # head_key -> the h's taken alike in the block, in order
        self.priors: dict[tuple, Batch] = {}  # head_key -> the prior heads of those h's, made at once
        self.counts = COUNTS.setdefault(nets, {"hits": 0, "misses": 0})
        self.transitions = [module for module in nets.modules() if isinstance(module, Transition)]
        self.weights = {id(t): tuple(t.parameters()) for t in self.transitions}
        self.stochastic = {id(t): tuple(m for m in t.modules() if isinstance(m, STOCHASTIC_LAYERS))
                           for t in self.transitions}
        self.unbatched = {id(t): tuple(m for m in t.modules() if isinstance(m, STOCHASTIC_LAYERS + BATCH_NORMS))
                          for t in self.transitions}  # what may make the prior heads' rows meet (batchable)
        joining = [(nets, SharedStart)] if hasattr(nets, "initial_state") else []
        self.joined = [(module, mixin) for module, mixin in joining + [(t, SharedSteps) for t in self.transitions]
                       if id(module) not in BLOCKS]  # not twice, in a block on a part of these networks
        OPEN[id(nets)] = self
        for module, mixin in self.joined:
            BLOCKS[id(module)] = self
            module.__class__ = shared_class(type(module), mixin)

    def leave(self) -> None:
        del OPEN[id(self.nets)]
        for module, _ in self.joined:
            del BLOCKS[id(module)]
            module.__class__ = type(module).__bases__[1]

    def step(self, transition: Transition, previous: State, above: State, take: Callable) -> torch.Tensor:
        """The h stored for these inputs (a hit), or ``take``'s, stored with the inputs kept alive (a miss)."""
        if any(layer.training for layer in self.stochastic[id(transition)]):
            return take(previous, above)
        inputs = (*previous, *above)
        try:
            key = step_key(transition, self.weights[id(transition)], inputs)
        except RuntimeError:  # inference tensors have no version counter: such a step is never shared
            return take(previous, above)
        entry = self.entries.get(key)
        if entry is not None:
            self.counts["hits"] += 1
            return entry[1]
        self.counts["misses"] += 1
        h = take(previous, above)
        self.entries[key] = ((transition, inputs), h)
        if not h.is_inference():
            self.taken.setdefault(self.head_key(transition, h), []).append(h)
        return h

    def head_key(self, transition: Transition, h: torch.Tensor) -> tuple:
        """What the h's whose prior heads are batched together share, when taken and when asked for."""
        return (id(transition), torch.is_grad_enabled(), autocast_state(h.device.type),
                versions(self.weights[id(transition)]), h.shape, h.dtype, h.device)

    def batchable(self, transition: Transition) -> bool:
        """Whether the prior head is ``Transition``'s (a variant's own forward may do anything) and its rows never
        meet: no stochastic layer or batch norm in training mode, no batch norm without running statistics."""
        return type(transition).__bases__[1].forward is Transition.forward and not any(
            layer.training or getattr(layer, "running_mean", 0) is None for layer in self.unbatched[id(transition)])

    def prior(self, transition: Transition, args: tuple, kwargs: dict, head: Callable):
        """The prior head ``head(*args, **kwargs)``: for one h that ``transition`` took, its row of the batch of all
        the h's it took alike (``head_key``), made at the first such call; computed alone otherwise."""
        h = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) else None
        if h is None or h.is_inference() or not self.batchable(transition):
            return head(*args, **kwargs)
        key = self.head_key(transition, h)
        batch = self.priors.get(key)
        if batch is None:
            taken = self.taken.get(key, ())
            if not any(h is made for made in taken):
                return head(h)
            batch = self.priors[key] = Batch.of(taken, head)
        return batch.row(h) or head(h)

    def initial(self, batch_size: int, make: Callable) -> State:
        """The state stored for ``batch_size`` unless it was edited in place since, else ``make``'s, stored."""
        if torch.is_inference_mode_enabled():
            return make(batch_size)
        entry = self.entries.get(("initial", batch_size))
        if entry is not None and versions(entry[0]) == entry[1]:
            return entry[0]
        state = make(batch_size)
        self.entries[("initial", batch_size)] = (state, versions(state))
        return state


class Batch:
    """The prior heads of h's, computed as rows of one batch; each h's row while the h and the rows are as then.
    The rows are views of the batch: a program may edit them out of place only (in place, torch refuses with grad;
    without grad the next request sees the edit and computes its head alone)."""

    def __init__(self, hs: list[torch.Tensor], outputs: tuple[torch.Tensor, ...] = (), steps: int = 0):
        self.hs, self.outputs = hs, outputs  # hs: no id is reused while this lives
        self.index = {id(h): (index, h._version) for index, h in enumerate(hs)}
        self.versions = versions(outputs)
        self.rows = [output.unflatten(0, (steps, -1)).unbind(0) for output in outputs]  # unbind: one kernel back

    @classmethod
    def of(cls, hs: list[torch.Tensor], head: Callable) -> "Batch":
        hs = list(hs)
        outputs = head(torch.cat(hs))  # the steps' rows one after another: (steps * batch, ...)
        if not (isinstance(outputs, tuple) and all(isinstance(output, torch.Tensor) and output.dim() > 0 and
                                                   output.shape[0] == len(hs) * hs[0].shape[0] for output in outputs)):
            return cls(hs)  # not a tuple of rows (a scale shared by all rows, say): every head is computed alone
        return cls(hs, outputs, len(hs))

    def row(self, h: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        index, version = self.index.get(id(h), (None, None))
        if index is None or not self.outputs or h._version != version or versions(self.outputs) != self.versions:
            return None
        return tuple(rows[index] for rows in self.rows)


def versions(tensors) -> tuple[int, ...]:
    return tuple(tensor._version for tensor in tensors)


def step_key(transition: Transition, weights: tuple, inputs: tuple[torch.Tensor, ...]) -> tuple:
    """What a GRU step's result depends on besides the weights' values."""
    return (id(transition), torch.is_grad_enabled(), autocast_state(inputs[-1].device.type), versions(weights),
            *map(id, inputs), *versions(inputs))


def autocast_state(device: str) -> torch.dtype | None:
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


class Plain:
    """A copy (deepcopy, pickle) of a module in a block is of its plain class, outside any block."""

    def __reduce_ex__(self, protocol):
        _, _, *state = super().__reduce_ex__(protocol)
        return (new_plain, (type(self).__bases__[1],), *state)


def new_plain(cls: type):
    return cls.__new__(cls)


class SharedSteps(Plain):
    def deterministic(self, previous: State, above: State) -> torch.Tensor:
        return BLOCKS[id(self)].step(self, previous, above, super().deterministic)

    def forward(self, *args, **kwargs):
        return BLOCKS[id(self)].prior(self, args, kwargs, super().forward)


class SharedStart(Plain):
    def initial_state(self, batch_size: int) -> State:
        return BLOCKS[id(self)].initial(batch_size, super().initial_state)


@functools.cache
def shared_class(cls: type, mixin: type) -> type:
    """``cls`` with ``mixin``'s methods first, under ``cls``'s name (as printed)."""
    return type(cls.__name__, (mixin, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
