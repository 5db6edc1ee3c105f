"""The model and guide as Pyro programs: their sites, shapes, densities, and loading a user's variant."""
import math
import textwrap

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from benchmarks import reference
from pyro_cwvae.errors import UserError
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.model.programs import check_programs_match, load_program, load_programs


def expected_latents(cfg, num_frames):
    return {cfg.clock.site_name(level, t) for level in range(1, cfg.levels + 1)
            for t in cfg.clock.active_frames(level, num_frames)}


def sample_sites(trace):
    return {name for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)}


@pytest.mark.parametrize("levels,factor,frames", [(2, 2, 8), (3, 2, 9), (1, 4, 5), (3, 1, 4)])
def test_level_sites_lie_on_T_l(tiny_cfg, levels, factor, frames):
    cfg = tiny_cfg.replace(levels=levels, factor=factor, seq_len=max(frames, factor ** (levels - 1)))
    nets = CWVAENets(cfg)
    video = torch.rand(2, frames, 1, 64, 64)
    guide_trace = poutine.trace(guide).get_trace(video, nets, cfg)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(video, nets, cfg)
    latents = expected_latents(cfg, frames)
    assert sample_sites(guide_trace) == latents
    assert sample_sites(model_trace) == latents | {"x"}
    assert model_trace.nodes["x"]["is_observed"]
    assert len(latents) == sum(cfg.clock.num_steps(level, frames) for level in range(1, levels + 1))


def test_site_shapes(tiny_cfg, video):
    nets = CWVAENets(tiny_cfg)
    guide_trace = poutine.trace(guide).get_trace(video, nets, tiny_cfg)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(video, nets, tiny_cfg)
    model_trace.compute_log_prob()
    for name in expected_latents(tiny_cfg, 8):
        site = model_trace.nodes[name]
        assert site["fn"].batch_shape == (2,) and site["fn"].event_shape == (tiny_cfg.z_size,)
        assert site["log_prob"].shape == (2,)
    x = model_trace.nodes["x"]
    assert x["fn"].batch_shape == (2,) and x["fn"].event_shape == (8, 1, 64, 64)
    assert "batch" in model_trace.format_shapes()


def test_model_and_guide_register_the_same_networks(tiny_cfg, video):
    nets = CWVAENets(tiny_cfg)
    guide(video, nets, tiny_cfg)
    names = set(pyro.get_param_store().keys())
    assert names == {f"cwvae$$${name}" for name, _ in nets.named_parameters()}


def log_normal(x, loc, scale):
    """log N(x; loc, scale), summed over the last dimension, written out."""
    return (-0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def eq3_and_eq4_by_hand(nets, video, cfg):
    """-[log p(x | s^1) + sum log p(s_t^l | ...) - sum log q(s_t^l | ...)] at the draws the guide takes under the
    current seed, with the networks of benchmarks/reference.py (an independent transcription of the official
    code) and Gaussian log-densities written out."""
    w = reference.Weights(nets)
    B, T = video.shape[:2]
    embeddings = reference.encode(w, video, cfg)
    above = video.new_zeros(B, reference.num_steps(cfg, cfg.levels + 1, T), cfg.state_size)
    log_ratio = video.new_zeros(())
    for level in range(cfg.levels, 0, -1):
        above, (loc_q, scale_q), h = reference.unroll_level(w, cfg, level, embeddings[level - 1], above,
                                                            reference.num_steps(cfg, level, T))
        z = above[..., :cfg.z_size]
        log_p = log_normal(z, *reference.prior(w, cfg, level, h))
        log_ratio = log_ratio + (log_normal(z, loc_q, scale_q) - log_p).sum()
    reconstruction = reference.normal_nll(video, reference.decode_mean(w, above, cfg), cfg.dec_std).sum()
    return reconstruction + log_ratio


@pytest.mark.parametrize("levels", [2, 3])
def test_pyros_elbos_of_the_programs_equal_eq3_and_the_official_computation(tiny_cfg, video, levels):
    """Pyro's Trace_ELBO of the programs is eq. 3 minus eq. 4 at the guide's draws, and its TraceMeanField_ELBO
    the official loss (analytic KLs), both computed without the programs, under the same seed."""
    cfg = tiny_cfg.replace(levels=levels)
    nets = CWVAENets(cfg)
    pyro.set_rng_seed(7)
    trace_loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, video, nets, cfg)
    pyro.set_rng_seed(7)
    torch.testing.assert_close(trace_loss, eq3_and_eq4_by_hand(nets, video, cfg), rtol=1e-5, atol=0)
    pyro.set_rng_seed(7)
    meanfield_loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(model, guide, video, nets, cfg)
    pyro.set_rng_seed(7)
    official = reference.negative_elbo(nets, video, cfg).loss * video.shape[:2].numel()
    torch.testing.assert_close(meanfield_loss, official, rtol=1e-5, atol=0)
    assert abs(trace_loss - meanfield_loss) > 10 * 1e-5 * abs(meanfield_loss)  # two estimators, told apart


def test_model_samples_states_without_a_video(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    trace = poutine.trace(model).get_trace(None, nets, tiny_cfg, num_frames=11, batch_size=3)
    assert "x" not in trace.nodes
    assert sample_sites(trace) == expected_latents(tiny_cfg, 11)
    assert trace.nodes["_RETURN"]["value"].shape == (3, 11, tiny_cfg.state_size)


def test_kl_scale_scales_latent_sites_in_both_programs(tiny_cfg, video):
    nets = CWVAENets(tiny_cfg)
    guide_trace = poutine.trace(guide).get_trace(video, nets, tiny_cfg, 0.25)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(video, nets, tiny_cfg, 0.25)
    for name in expected_latents(tiny_cfg, 8):
        assert guide_trace.nodes[name]["scale"] == 0.25 == model_trace.nodes[name]["scale"]
    assert model_trace.nodes["x"]["scale"] == 1.0


def test_user_variant_file_is_loaded(tmp_path):
    variant = tmp_path / "variant.py"
    variant.write_text(textwrap.dedent("""
        def model(video, nets, cfg, kl_scale=1.0, num_frames=None, batch_size=None):
            return "variant"
    """))
    program = load_program("model", str(variant))
    assert program.fn(None, None, None) == "variant"
    assert "variant" in program.source and program.path == str(variant)


def test_default_programs_record_their_source():
    program = load_program("guide", None)
    assert program.source.startswith('"""The CW-VAE inference model')


MAKE_NETS = "from pyro_cwvae.model.nets import CWVAENets\n\ndef make_nets(cfg):\n    return ('{kind}', cfg)\n"


@pytest.mark.parametrize("kinds", [(), ("model",), ("guide",)])
def test_make_nets_comes_from_the_model_file_else_the_guide_file_else_cwvaenets(tmp_path, kinds):
    paths = {}
    for kind in ("model", "guide"):
        paths[kind] = tmp_path / f"{kind}.py"
        paths[kind].write_text(f"def {kind}(*args): pass\n" + (MAKE_NETS.format(kind=kind) if kind in kinds else ""))
    programs = load_programs(str(paths["model"]), str(paths["guide"]))
    assert programs.make_nets("cfg") == (kinds[0], "cfg") if kinds else programs.make_nets is CWVAENets
    assert [p.source for p in programs] == [paths["model"].read_text(), paths["guide"].read_text()]


def test_a_run_of_an_earlier_packaged_program_loads_and_warns_only_if_its_code_changed(tmp_path, recwarn):
    programs = load_programs(None, None)
    recorded = {kind: {"path": p.path, "source": p.source} for kind, p in zip(("model", "guide"), programs)}

    def state(guide_source):
        return {"programs": {**recorded, "guide": {"path": "guides/cwvae.py", "source": guide_source}}}

    source = programs.guide.source
    reworded = source.replace('"""', '"""An earlier docstring. ', 1) + "\n# a comment\n"
    check_programs_match(state(reworded), programs)  # the same code: silent
    assert not recwarn.list
    changed = source.replace("return level1", "return level1 * 1")
    assert changed != source
    with pytest.warns(UserWarning, match="packaged guide program has changed"):
        check_programs_match(state(changed), programs)
    variant = tmp_path / "guide.py"
    variant.write_text(source)
    mine = load_programs(None, str(variant))
    with pytest.raises(UserError, match="differs from the one the checkpoint was trained with"):
        check_programs_match(state(changed), mine)  # a user's file must be the very same


def test_make_nets_in_both_files_is_refused_in_one_line(tmp_path):
    for kind in ("model", "guide"):
        (tmp_path / f"{kind}.py").write_text(f"def {kind}(*args): pass\n" + MAKE_NETS.format(kind=kind))
    with pytest.raises(UserError, match="both define make_nets: keep one") as caught:
        load_programs(str(tmp_path / "model.py"), str(tmp_path / "guide.py"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    ("x = 1\n", "defines no function named 'model'"),
    ("raise RuntimeError('boom')\n", "failed to load: RuntimeError: boom"),
])
def test_bad_model_files_are_refused(tmp_path, content, message):
    path = tmp_path / "m.py"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_program("model", str(path))


def test_decoder_first_layer_equals_the_transposed_convolution(tiny_cfg):
    """The decoder computes its first transposed conv (of a 1x1 input) as a matrix product: same numbers."""
    import torch.nn.functional as F

    decoder = CWVAENets(tiny_cfg).decoder
    states = torch.randn(5, tiny_cfg.state_size)
    first = decoder.deconvs[0](decoder.dense(states)[:, :, None, None])
    hidden = F.leaky_relu(first, 0.2)
    for deconv in decoder.deconvs[1:-1]:
        hidden = F.leaky_relu(deconv(hidden), 0.2)
    expected = torch.tanh(decoder.deconvs[-1](hidden))
    assert first.shape[-2:] == (5, 5) and expected.shape == (5, 1, 64, 64)
    assert torch.allclose(decoder(states), expected, atol=1e-6)


def test_initial_weights_follow_the_reference(tiny_cfg):
    """Keras' defaults, as in the reference: Glorot-uniform kernels, orthogonal GRU recurrent kernels, zero biases."""
    nets = CWVAENets(tiny_cfg.replace(h_size=16))
    for name, tensor in nets.named_parameters():
        if "bias" in name:
            assert not tensor.any(), name
    dense = nets.level(1).posterior.hidden1.weight  # (out, in)
    bound = (6 / sum(dense.shape)) ** 0.5
    assert dense.abs().max() <= bound and dense.abs().max() > 0.9 * bound  # uniform on [-bound, bound]
    conv = nets.decoder.deconvs[1].weight  # (in, out, k, k)
    bound = (6 / ((conv.shape[0] + conv.shape[1]) * conv.shape[2] * conv.shape[3])) ** 0.5
    assert conv.abs().max() <= bound and conv.abs().max() > 0.9 * bound
    recurrent = nets.level(1).transition.gru.weight_hh.detach()  # (3h, h): orthonormal columns
    torch.testing.assert_close(recurrent.T @ recurrent, torch.eye(16), atol=1e-5, rtol=0)


def level_embeddings_seen(nets, cfg, video, level):
    """The embeddings level ``level``'s posterior receives in one run of the guide, (steps, B, features)."""
    seen = []
    hook = nets.levels[level - 1].posterior.register_forward_pre_hook(lambda _, args: seen.append(args[1]))
    guide(video, nets, cfg)
    hook.remove()
    return torch.stack(seen)


@torch.no_grad()  # kept for a backward pass, the activations of 4000 frames would take gigabytes
def test_obs_dropout_hides_that_share_of_frames_from_level_1_in_training_only(tiny_cfg):
    cfg = tiny_cfg.replace(obs_dropout=0.3, seq_len=200)
    nets = CWVAENets(cfg)
    videos = torch.rand(4, 5, 200, 1, 64, 64)  # 20 videos, filtered five at a time to keep the memory small
    hidden = torch.cat([(level_embeddings_seen(nets, cfg, video, 1) == 0).all(-1) for video in videos], 1)
    # 4000 Bernoulli(0.3) draws: the share lies within 0.3 +- 0.029 (four standard deviations)
    assert hidden.shape == (200, 20) and abs(hidden.float().mean().item() - 0.3) < 0.029
    video = videos[0]
    full = nets.encoder(video)  # what a frame not hidden shows: its embedding unchanged
    assert torch.equal(level_embeddings_seen(nets, cfg.replace(obs_dropout=0.0), video, 1), full[0].transpose(0, 1))
    # only level 1's frames are hidden: the levels above see their windows whole, in training too
    assert torch.equal(level_embeddings_seen(nets, cfg, video, 2), full[1].transpose(0, 1))
    nets.eval()  # filtering a context for a rollout: every frame seen, and every level unchanged
    for level in (1, 2):
        seen = level_embeddings_seen(nets, cfg, video, level)
        assert torch.equal(seen, full[level - 1].transpose(0, 1)), level


@torch.no_grad()  # no activations kept for a backward pass: 800 frames' would take about a gigabyte
def test_obs_dropout_span_hides_and_shows_whole_spans_of_frames(tiny_cfg):
    cfg = tiny_cfg.replace(obs_dropout=0.5, obs_dropout_span=4, seq_len=40)
    video = torch.rand(20, 40, 1, 64, 64)
    hidden = (level_embeddings_seen(CWVAENets(cfg), cfg, video, 1) == 0).all(-1).reshape(10, 4, 20)  # spans
    assert (hidden == hidden[:, :1]).all()  # each span of 4 frames all hidden or all shown
    assert 0.3 < hidden.float().mean().item() < 0.7  # 200 Bernoulli(0.5) draws: five standard deviations
    # Each sequence draws its own spans: all 20 alike in one of the 10 spans has chance 10 * 2 * 0.5^20, 2e-5.
    assert not (hidden[:, 0] == hidden[:, 0, :1]).all(-1).any()


@torch.no_grad()
def test_obs_dropout_span_that_does_not_divide_the_sequence_cuts_the_last_span_short(tiny_cfg):
    cfg = tiny_cfg.replace(obs_dropout=0.5, obs_dropout_span=3, seq_len=8)
    video = torch.rand(40, 8, 1, 64, 64)
    hidden = (level_embeddings_seen(CWVAENets(cfg), cfg, video, 1) == 0).all(-1)  # (8 frames, 40 sequences)
    for span in (slice(0, 3), slice(3, 6), slice(6, 8)):  # frames 6 and 7: the span the sequence's end cuts short
        assert (hidden[span] == hidden[span][:1]).all(), span
    # the short span is drawn like the others: hidden in none or all of 40 sequences has chance 2 * 0.5^40
    assert 0 < hidden[6].float().mean().item() < 1
