"""The pictures that explain diffusion, as arrays: each function computes
what a figure shows from a process or a trained network (`jaxdiff.trained`)
and `jaxdiff.viz` draws it; `--mode viz` (`jaxdiff/modes/viz.py`) picks the
figures and writes them into `<workdir>/figures/`.

* `forward`: one image along the forward process (`forward_times`,
  `forward_frames`), the linear and cosine schedules (`schedule_curves`,
  `plot_schedules`, which draws them with no config).
* `reverse`: sampler and DPS trajectories of a trained network with the time
  of each saved frame (`reverse_trajectory`, `dps_trajectory`; `grid_kind`,
  the grid a sampler runs).
* `noise`: the network's noise estimate against the true noise
  (`noise_pairs`, `noise_panels`).
* `denoising`: noisy / one-step Tweedie / inverse methods, with the
  protocol's per-image metrics (`denoising_columns`, `column_metrics`).

    python -m jaxdiff.figures docs/schedules.png   # the schedules, no config
"""
from jaxdiff.figures.denoising import column_metrics, denoising_columns
from jaxdiff.figures.forward import (forward_frames, forward_times,
                                     plot_schedules, process_name,
                                     schedule_curves, time_labels)
from jaxdiff.figures.noise import (gaussian_reference, hist_times,
                                   noise_pairs, noise_panels)
from jaxdiff.figures.reverse import (dps_trajectory, grid_kind,
                                     reverse_trajectory, saved_times,
                                     trajectory_every)

__all__ = ["column_metrics", "denoising_columns", "dps_trajectory",
           "forward_frames", "forward_times", "gaussian_reference",
           "grid_kind",
           "hist_times", "noise_pairs", "noise_panels", "plot_schedules",
           "process_name", "reverse_trajectory", "saved_times",
           "schedule_curves", "time_labels", "trajectory_every"]
