"""The speed and per-level KL of a training run stopped after a known wall time (the paper part of gpu.sh).

    python -m benchmarks.run_speed RUN/history.nc SECONDS

Prints a markdown row: steps taken, the wall seconds given, seconds per step (start-up and checkpoint saves
included, so an upper bound on the step time bench.py measures) and the KL per frame of each level over the last
tenth of the steps.
"""
from __future__ import annotations

import sys

import xarray as xr


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    with xr.open_dataset(argv[0], engine="netcdf4") as history:
        steps = int(history.step.max())
        kl = history.kl.isel(step=slice(-max(1, history.sizes["step"] // 10), None)).mean("step").values
    seconds = float(argv[1])
    print("| steps | wall seconds | s/step (start-up and saves included) | KL per frame, last tenth, by level |")
    print("|---|---|---|---|")
    print(f"| {steps} | {seconds:.0f} | {seconds / max(steps, 1):.3f} | {' / '.join(f'{v:.3g}' for v in kl)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
