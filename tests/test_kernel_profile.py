"""benchmarks/kernels.py, the profile of a step's kernels that issue 22 reads to decide what to fuse: its families,
its busy share and its counts, on a CPU, against steps whose operators are known."""
import collections
import random

import pytest
import torch

from benchmarks.graph import main as graph_main
from benchmarks.kernels import covered_us, family_of, profile_steps, profile_table
from benchmarks.launches import main as launches_main


@pytest.mark.parametrize("name, family", [
    # names as the CUDA profiler reports them (torch 2.x on Ampere / Hopper)
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32_warpgroupsize1x1x1_execute_segment_k_off_kernel",
     "matrix product"),
    ("ampere_sgemm_32x32_sliced1x4_tn", "matrix product"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_16x6_tn_align4>(Params)", "matrix product"),
    ("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize128x64x32", "convolution"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true>(...)", "convolution"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float>, ...>(int, ...)",
     "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<...> > >(...)",
     "reduction"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>(...)", "optimizer (foreach)"),
    ("void at::native::(anonymous namespace)::distribution_elementwise_grid_stride_kernel<float, 4, "
     "at::native::templates::cuda::normal_and_transform<...> >(...)", "random numbers"),
    ("Memcpy HtoD (Pageable -> Device)", "copy, fill"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<...>(...)", "copy, fill"),
    ("aten::addmm", "matrix product"), ("aten::convolution_backward", "convolution"), ("aten::sum", "reduction"),
    ("aten::normal_", "random numbers"), ("aten::copy_", "copy, fill"), ("aten::sigmoid", "elementwise"),
    ("aten::resolve_conj", "no kernel (view, allocation)"), ("aten::view", "no kernel (view, allocation)"),
    ("aten::empty_strided", "no kernel (view, allocation)"), ("some_custom_kernel", "other"),
])
def test_families_of_known_kernel_names(name, family):
    assert family_of(name) == family


def test_covered_time_equals_a_brute_force_union():
    rng = random.Random(0)
    intervals = [(start := rng.uniform(0, 100), start + rng.uniform(0, 10)) for _ in range(60)]
    grid = [i / 100 for i in range(12_000)]  # 0.01-wide cells of 0..120, each covered or not at its middle
    brute = sum(0.01 for x in grid if any(a <= x + 0.005 < b for a, b in intervals))
    assert covered_us(intervals) == pytest.approx(brute, abs=0.02 * len(intervals))
    assert covered_us([(0, 10), (2, 3), (5, 12)]) == 12
    assert covered_us([]) == 0


def test_a_profile_counts_each_computing_operator_once():
    a, b = torch.randn(64, 64), torch.randn(64, 64)

    def step():  # 7 kernels: 3 products, a sigmoid, a sum, a conversion, a product with a bias
        for _ in range(3):
            torch.mm(a, b)
        torch.sigmoid(a).sum()
        a.to(torch.float64)  # aten::to -> _to_copy -> copy_: one copy
        torch.nn.functional.linear(a, b, a[0])  # aten::linear -> addmm (which copies its bias on a CPU): one product

    prof = profile_steps(step, torch.device("cpu"), steps=4)
    names = collections.Counter(name for name, _ in prof.kernels)
    assert names == {"aten::mm": 12, "aten::sigmoid": 4, "aten::sum": 4, "aten::copy_": 4, "aten::addmm": 4}
    assert 0 < covered_us(prof.busy) / 1e6 <= prof.wall_s
    table = profile_table("step", prof)
    assert "7 CPU operators that do the work a step" in table
    assert "| matrix product | 4 |" in table and "| elementwise | 1 |" in table and "| reduction | 1 |" in table
    assert "| copy, fill | 1 |" in table and "`aten::mm` | 3 |" in table


def test_the_graph_benchmark_profiles_each_implementation_on_a_cpu(capsys):
    graph_main(["--device", "cpu", "--sizes", "tiny", "--repeats", "1", "--profile", "1"])
    out = capsys.readouterr().out
    assert "| tiny | 2 x 8 |" in out
    assert "Size tiny, **Pyro eager**" in out and "Size tiny, **reference**" in out
    assert "Pyro graphed**" not in out  # no graph on a CPU
    assert out.count("\n| convolution |") == 2 and out.count("\n| matrix product |") == 2


def test_the_launch_count_table_adds_up(capsys):
    launches_main(["--sizes", "tiny"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[1].strip() for row in rows] == ["Pyro meanfield", "Pyro trace", "reference"]
    for row in rows:
        total, families = int(row[2].replace(",", "")), [int(cell.replace(",", "")) for cell in row[4:]]
        assert total == sum(families) > 0
    assert float(rows[2][3]) == 1.0
