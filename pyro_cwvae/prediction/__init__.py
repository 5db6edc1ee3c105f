"""Open-loop prediction of a trained run: ``load_run``, then ``rollout.rollout`` with ``PredictionOptions``
(not re-exported here: the name would hide its module).

The names below are imported from their modules when first used (PEP 562), so that reading the options
(options.py, which the command line does for its help) does not import torch, Pyro and xarray."""
from importlib import import_module

HOMES = {
    "frames": ("baseline_frames", "decode", "read_test_frames", "score_frames", "scored_chunks", "unit_frames"),
    "kl": ("kl_table_variable", "truth_kls"),
    "latents": ("rollout_trace", "sampled_trace"),
    "options": ("Intervention", "PredictionOptions"),
    "rollout": ("check_options", "summary", "write_rollout"),
    "run": ("Run", "load_run"),
    "time_axis": ("TIME_ATTRS", "frames_ahead", "is_context"),
}
MODULE_OF = {name: module for module, names in HOMES.items() for name in names}
__all__ = sorted(MODULE_OF)


def __getattr__(name: str):
    if name not in MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{MODULE_OF[name]}"), name)
    globals()[name] = value  # found at once from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
