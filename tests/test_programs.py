"""The model and guide as Pyro programs: their sites, shapes, and loading a user's variant."""
import textwrap

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_cwvae.errors import UserError
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.nets import CWVAENets
from pyro_cwvae.programs import load_program


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


def test_trace_elbo_is_finite_and_meanfield_too(tiny_cfg, video):
    nets = CWVAENets(tiny_cfg)
    for elbo in (pyro.infer.Trace_ELBO(), pyro.infer.TraceMeanField_ELBO()):
        assert torch.isfinite(elbo.differentiable_loss(model, guide, video, nets, tiny_cfg))


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


def test_obs_dropout_hides_that_share_of_frames_from_level_1_in_training_only(tiny_cfg):
    cfg = tiny_cfg.replace(obs_dropout=0.3, seq_len=200)
    nets = CWVAENets(cfg)
    video = torch.rand(20, 200, 1, 64, 64)
    hidden = (level_embeddings_seen(nets, cfg, video, 1) == 0).all(-1)  # (200 steps, 20 videos)
    # 4000 Bernoulli(0.3) draws: the share lies within 0.3 +- 0.029 (four standard deviations)
    assert abs(hidden.float().mean().item() - 0.3) < 0.029
    full = nets.encoder(video)  # what a frame not hidden shows: its embedding unchanged
    assert torch.equal(level_embeddings_seen(nets, cfg.replace(obs_dropout=0.0), video, 1), full[0].transpose(0, 1))
    nets.eval()  # filtering a context for a rollout: every frame seen, and every level unchanged
    for level in (1, 2):
        seen = level_embeddings_seen(nets, cfg, video, level)
        assert torch.equal(seen, full[level - 1].transpose(0, 1)), level


def test_obs_dropout_span_hides_and_shows_whole_spans_of_frames(tiny_cfg):
    cfg = tiny_cfg.replace(obs_dropout=0.5, obs_dropout_span=4, seq_len=40)
    video = torch.rand(20, 40, 1, 64, 64)
    hidden = (level_embeddings_seen(CWVAENets(cfg), cfg, video, 1) == 0).all(-1).reshape(10, 4, 20)  # spans
    assert (hidden == hidden[:, :1]).all()  # each span of 4 frames all hidden or all shown
    assert 0.3 < hidden.float().mean().item() < 0.7  # 200 Bernoulli(0.5) draws: five standard deviations
