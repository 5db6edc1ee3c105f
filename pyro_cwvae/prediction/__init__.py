"""Open-loop prediction of a trained run: ``load_run``, then ``rollout.rollout`` with ``PredictionOptions``
(not re-exported here: the name would hide its module)."""
from pyro_cwvae.prediction.frames import (baseline_frames, decode, read_test_frames, score_frames, scored_chunks,
                                          unit_frames)
from pyro_cwvae.prediction.kl import kl_table_variable, truth_kls
from pyro_cwvae.prediction.latents import Intervention, rollout_trace, sampled_trace
from pyro_cwvae.prediction.options import PredictionOptions
from pyro_cwvae.prediction.rollout import TIME_ATTRS, check_options, frames_ahead, is_context, summary, write_rollout
from pyro_cwvae.prediction.run import Run, load_run

__all__ = ["Intervention", "PredictionOptions", "Run", "TIME_ATTRS", "baseline_frames", "check_options", "decode",
           "frames_ahead", "is_context", "kl_table_variable", "load_run", "read_test_frames",
           "rollout_trace", "sampled_trace", "score_frames", "scored_chunks", "summary", "truth_kls", "unit_frames",
           "write_rollout"]
