"""Figures, image grids and animations for diffusion experiments.

Headless: figures are built with `matplotlib.figure.Figure` on an Agg canvas
(no pyplot, no global backend switch, no display) and images are written with
PIL. Every writer takes numpy arrays, creates the parent directories of
`path`, writes the file and returns the path as a string.

Images are NHWC, either uint8 in [0, 255] or float in [-1, 1] (see
`to_uint8`). 1-channel images are drawn with a gray colormap; 3-channel
images as RGB. A 3-D batch [N, H, W] is read as 1-channel.

* `canvas`: `to_uint8` and the figure plumbing the writers share.
* `images`: `make_grid`, `save_grid` (the one sample-grid writer),
  `forward_strip`, `frame_strip`, `reverse_gif`, `comparison_figure`.
* `charts`: `schedules_figure`, `noise_histograms`, `read_metrics`,
  `loss_curves`, `confusion_matrix_figure`, `curves_figure`,
  `histograms_figure`.
"""
from jaxdiff.viz.canvas import to_uint8
from jaxdiff.viz.charts import (confusion_matrix_figure, curves_figure,
                                histograms_figure, loss_curves,
                                noise_histograms, read_metrics,
                                schedules_figure)
from jaxdiff.viz.images import (comparison_figure, forward_strip,
                                frame_strip, make_grid, reverse_gif,
                                save_grid)

__all__ = ["comparison_figure", "confusion_matrix_figure", "curves_figure",
           "forward_strip", "frame_strip", "histograms_figure", "loss_curves",
           "make_grid",
           "noise_histograms", "read_metrics", "reverse_gif", "save_grid",
           "schedules_figure", "to_uint8"]
