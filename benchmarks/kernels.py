"""What a step's device time is made of (``python -m benchmarks.graph --profile N``): the kernels of N steps under
the torch profiler, by family, and how much of the wall time the device spends running them.

On a CUDA device the "kernels" are the device's own (CUPTI records those a CUDA graph launches too), so for an eager
step the busy share says how far it waits on the host, and for a replayed graph where the time still goes: whether
many small elementwise kernels (what fusing a cell would remove) or matrix products and convolutions (what it
would not). On a CPU they are the torch operators that compute, each counted once (``aten::linear`` is counted as the
``aten::addmm`` it calls, and that one's own helpers are not counted again; views and allocations are not counted),
with its time on the host: about the kernels a GPU would launch for the same step (CPU and GPU implementations
differ in their details). The busy share is the share of the wall time spent inside torch operators rather than in
Python.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.workloads import synchronize

NO_KERNEL = "no kernel (view, allocation)"
COMPOSITE = r"aten::(linear|matmul|to|_to_copy|contiguous|gru_cell|einsum|dropout|softplus)$"
"""Operators that only call others, each of which a GPU runs as a kernel of its own: their callees are counted."""
FAMILIES = [  # the first pattern that matches a kernel's (or operator's) name names its family
    (NO_KERNEL, r"aten::(view|_unsafe_view|reshape|_reshape_alias|expand|as_strided|t|transpose"
                                     r"|permute|unsqueeze|squeeze|select|slice|narrow|split|chunk|unbind|flatten"
                                     r"|unflatten|alias|detach|lift_fresh|resolve_conj|resolve_neg|empty"
                                     r"|empty_like|empty_strided|new_empty|new_empty_strided|result_type|broadcast_tensors"
                r"|unsafe_split|unsafe_chunk|split_with_sizes|size|stride|is_nonzero|item|_local_scalar_dense)$"),
    ("convolution", r"conv|cudnn|fprop|dgrad|wgrad|winograd|implicit_gemm|mkldnn"),
    ("matrix product", r"gemm|gemv|cublas|cutlass|xmma|\baten::(addmm|mm|bmm|matmul|linear|baddbmm)$"),
    ("optimizer (foreach)", r"foreach|multi_tensor|_amp_"),
    ("random numbers", r"philox|curand|random|normal|bernoulli|uniform"),
    ("reduction", r"reduce|norm|aten::(sum|mean|amax|amin|max|min|prod|any|all)$"),
    ("copy, fill", r"memcpy|memset|copy|fill|CatArray|aten::(cat|clone|contiguous|to|_to_copy|zero_|stack)$"),
    ("elementwise", r"elementwise|vectorized|aten::"),
]


def family_of(name: str) -> str:
    """The family of a kernel or operator name (``FAMILIES``), "other" where none matches."""
    for family, pattern in FAMILIES:
        if re.search(pattern, name, re.IGNORECASE):
            return family
    return "other"


@dataclass
class Profile:
    wall_s: float  # the profiled steps' wall time, host and device in step
    steps: int
    kernels: list[tuple[str, float]]  # name and time (microseconds) of each kernel run
    busy: list[tuple[float, float]]  # start and end (microseconds) of the intervals the device was working
    where: str  # what the kernels are


def profile_steps(step: Callable[[], object], device: torch.device, steps: int) -> Profile:
    """Run ``step`` ``steps`` times under the profiler (after the caller's warm-up) and keep its kernels: on CUDA
    the device's; on a CPU every torch operator with its own time (its children's left out), and the operators
    called from Python (not from another operator) as the busy intervals."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = time.perf_counter() - started
    events = prof.events()
    if device.type == "cuda":
        chosen = [e for e in events if e.device_type == DeviceType.CUDA]
        return Profile(wall, steps, [(e.name, e.time_range.elapsed_us()) for e in chosen],
                       [(e.time_range.start, e.time_range.end) for e in chosen], "GPU kernels")
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    working = [e for e in ops if does_work(e) and not re.match(COMPOSITE, e.name) and not inside_kernel(e)]
    outer = [e for e in ops if not within_operator(e)]
    return Profile(wall, steps, [(e.name, e.cpu_time_total) for e in working],
                   [(e.time_range.start, e.time_range.end) for e in outer], "CPU operators that do the work")


def does_work(event) -> bool:
    """Whether a profiled operator computes (a GPU would launch a kernel for it), unlike a view or an allocation."""
    return event.name.startswith("aten::") and family_of(event.name) != NO_KERNEL


def inside_kernel(event) -> bool:
    """Whether ``event`` is called by an operator that is itself counted as a kernel (as ``aten::addmm`` on a CPU
    calls ``aten::copy_`` for its bias), not by one that only combines others (``COMPOSITE``)."""
    return any(does_work(parent) and not re.match(COMPOSITE, parent.name) for parent in callers(event))


def within_operator(event) -> bool:
    return any(parent.name.startswith("aten::") for parent in callers(event))


def callers(event):
    """The profiled events ``event`` runs inside, innermost first."""
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def covered_us(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``intervals`` (kernels on several streams or threads may overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def profile_table(label: str, prof: Profile, top: int = 8) -> str:
    """The kernels of ``prof`` per step by family and the ``top`` longest, with the busy share of the wall time."""
    busy = covered_us(prof.busy) / 1e6 / prof.wall_s
    by_family: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    for name, us in prof.kernels:
        by_family.setdefault(family_of(name), []).append(us)
        by_name.setdefault(name, []).append(us)
    total = sum(sum(times) for times in by_family.values()) or float("nan")
    lines = [f"**{label}**: {prof.wall_s / prof.steps * 1e3:.1f} ms a step over {prof.steps} steps; "
             f"{len(prof.kernels) / prof.steps:,.0f} {prof.where} a step, busy {busy:.0%} of the wall time.", "",
             "| family | per step | ms per step | share | mean us |", "|---|---:|---:|---:|---:|"]
    for family, times in sorted(by_family.items(), key=lambda item: -sum(item[1])):
        lines.append(f"| {family} | {len(times) / prof.steps:,.0f} | {ms_per_step(times, prof):.2f} | "
                     f"{sum(times) / total:.1%} | {sum(times) / len(times):.1f} |")
    lines += ["", f"| longest {top} (by total time) | per step | ms per step | family |", "|---|---:|---:|---|"]
    for name, times in sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]:
        lines.append(f"| `{short(name)}` | {len(times) / prof.steps:,.0f} | {ms_per_step(times, prof):.2f} | "
                     f"{family_of(name)} |")
    return "\n".join(lines)


def ms_per_step(times_us: list[float], prof: Profile) -> float:
    return sum(times_us) / prof.steps / 1e3


def short(name: str, width: int = 70) -> str:
    """A kernel's name without its template arguments, cut to ``width`` characters."""
    name = re.sub(r"<.*>", "<...>", name)
    return name if len(name) <= width else name[:width - 3] + "..."
