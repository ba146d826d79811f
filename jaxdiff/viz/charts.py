"""Charts: noise schedules, noise histograms, training curves, confusion
matrices and generic line plots. Each writer takes numpy arrays, writes a
PNG (parent folders created) and returns its path."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from jaxdiff.viz.canvas import FONT_SIZE, PathLike, new_figure, save_figure


def schedules_figure(path: PathLike,
                     curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], *,
                     styles: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     xlabel: str = "t", title: Optional[str] = None,
                     snr_floor: float = 1e-5) -> str:
  """Plots noise schedules: alphabar(t) and SNR(t) = alphabar / (1 - alphabar).

  Args:
    path: Output PNG path.
    curves: name -> (t [T], alphabar [T]), e.g. {"linear": ..., "cosine": ...}.
    styles: Optional name -> matplotlib line options (color, lw, ls, ...) of
      that curve; curves without one are drawn with lw=1.8.
    xlabel: Label of both x-axes.
    title: Figure title.
    snr_floor: Lower limit of the SNR axis when the data go below it (e.g.
      alphabar_T ~ 1e-30 at the end of an unclipped cosine schedule), so that
      the useful range is not squashed; such curves run off the bottom.

  Returns:
    The path written.
  """
  fig = new_figure((10.0, 4.0))
  snr_min = np.inf
  ax_a, ax_s = fig.subplots(1, 2)
  for name, (t, abar) in curves.items():
    style = dict((styles or {}).get(name, {"lw": 1.8}))
    t = np.asarray(t, dtype=np.float64)
    abar = np.clip(np.asarray(abar, dtype=np.float64), 0.0, 1.0)
    ax_a.plot(t, abar, label=name, **style)
    with np.errstate(divide="ignore", invalid="ignore"):
      snr = abar / (1.0 - abar)
    snr = np.where((snr > 0) & np.isfinite(snr), snr, np.nan)  # log-safe
    if np.any(np.isfinite(snr)):
      snr_min = min(snr_min, float(np.nanmin(snr)))
    ax_s.plot(t, snr, label=name, **style)
  ax_a.set_ylabel(r"$\bar\alpha_t$")
  ax_a.set_title(r"Signal level $\bar\alpha_t$")
  ax_s.set_ylabel(r"SNR$(t) = \bar\alpha_t / (1 - \bar\alpha_t)$")
  ax_s.set_yscale("log")
  if snr_min < snr_floor:
    ax_s.set_ylim(bottom=snr_floor)
  ax_s.set_title("Signal-to-noise ratio (log scale)")
  for ax in (ax_a, ax_s):
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", alpha=0.3)
  ax_a.legend(fontsize=FONT_SIZE - 1)  # the same curves on both panels
  if title:
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
  fig.tight_layout()
  return save_figure(fig, path)


# -------------------------------------------------------------- histograms


def noise_histograms(
    path: PathLike,
    pairs: Mapping[str, Tuple[np.ndarray, np.ndarray]], *,
    bins: int = 60,
    reference: Optional[Mapping[str, np.ndarray]] = None,
    names: Tuple[str, str] = ("predicted", "true"),
    title: Optional[str] = None) -> str:
  """Overlaid density histograms of predicted vs true noise, one panel each.

  Args:
    path: Output PNG path.
    pairs: panel label (e.g. "t = 100") -> (predicted [M], true [M]); arrays
      of any shape are flattened.
    bins: Number of histogram bins (shared by all series of a panel).
    reference: Optional legend name -> samples, overlaid as an outline on
      every panel (e.g. {"Gaussian": normal samples} next to gamma noise).
    names: Legend names of the two series of `pairs`.
    title: Figure title.

  Returns:
    The path written.
  """
  labels = list(pairs)
  if not labels:
    raise ValueError("noise_histograms: no data.")
  ncol = min(len(labels), 4)
  nrow = int(math.ceil(len(labels) / ncol))
  fig = new_figure((3.6 * ncol, 3.0 * nrow + (0.3 if title else 0.0)))
  axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
  for ax, label in zip(axes, labels):
    pred, true = (np.asarray(a, np.float64).ravel() for a in pairs[label])
    series = [pred, true] + [np.asarray(r, np.float64).ravel()
                             for r in (reference or {}).values()]
    finite = np.concatenate([s[np.isfinite(s)] for s in series])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (
        -1.0, 1.0)
    if hi <= lo:
      lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    ax.hist(true[np.isfinite(true)], bins=edges, density=True, alpha=0.45,
            color="tab:blue", label=names[1])
    ax.hist(pred[np.isfinite(pred)], bins=edges, density=True, alpha=0.45,
            color="tab:orange", label=names[0])
    for j, (ref_name, ref) in enumerate((reference or {}).items()):
      ref = np.asarray(ref, np.float64).ravel()
      ax.hist(ref[np.isfinite(ref)], bins=edges, density=True,
              histtype="step", lw=1.6, color=f"C{(j + 2) % 10}",
              label=ref_name)
    ax.set_title(str(label), fontsize=FONT_SIZE + 1)
    ax.set_xlabel("value", fontsize=FONT_SIZE)
    ax.set_ylabel("density", fontsize=FONT_SIZE)
    ax.legend(fontsize=FONT_SIZE - 1)
    ax.grid(True, alpha=0.3)
  for ax in axes[len(labels):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ metrics


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
  """Reads a JSON-lines metrics file, skipping blank and malformed lines.

  Args:
    path: File with one JSON object per line.

  Returns:
    The records (dicts) in file order; lines that are not valid JSON objects
    are skipped.
  """
  records = []
  with open(path, "r", encoding="utf-8", errors="replace") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def _is_number(v: Any) -> bool:
  return (isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, bool) and math.isfinite(float(v)))


def _ema(y: np.ndarray, smooth: float) -> np.ndarray:
  """Bias-corrected exponential moving average (as in TensorBoard)."""
  out = np.empty_like(y)
  acc, norm = 0.0, 0.0
  for i, v in enumerate(y):
    acc = smooth * acc + (1.0 - smooth) * v
    norm = smooth * norm + (1.0 - smooth)
    out[i] = acc / norm
  return out


def loss_curves(path: PathLike, records: Sequence[Mapping[str, Any]], *,
                keys: Sequence[str] = ("loss",), x: str = "step",
                smooth: float = 0.0, title: Optional[str] = None) -> str:
  """Plots training curves from metric records, one panel per key.

  Each key of `keys` present (as a finite number) in some record is plotted
  against `x`; records without a numeric `x` are skipped (if no record has
  one, the record index is used). A panel uses a log y-axis when all its
  values are positive and not all equal. With `smooth` in (0, 1) the raw
  curve is drawn faint with a bias-corrected EMA on top.

  Args:
    path: Output PNG path.
    records: Dicts such as {"step": 10, "loss": 0.3, "lr": 1e-4}.
    keys: Metric names to plot.
    x: Name of the x-axis field.
    smooth: EMA factor in [0, 1); 0 disables smoothing.
    title: Figure title.

  Returns:
    The path written.
  """
  if not 0.0 <= smooth < 1.0:
    raise ValueError(f"loss_curves: smooth must be in [0, 1), got {smooth}.")
  use_index = not any(_is_number(r.get(x)) for r in records)
  xlabel = "record index" if use_index else x
  series = {}
  for key in keys:
    xs, ys = [], []
    for i, r in enumerate(records):
      xv = i if use_index else r.get(x)
      if _is_number(xv) and _is_number(r.get(key)):
        xs.append(float(xv))
        ys.append(float(r[key]))
    if ys:
      series[key] = (np.asarray(xs), np.asarray(ys))

  n = max(1, len(series))
  fig = new_figure((4.5 * n, 3.5 + (0.3 if title else 0.0)))
  axes = fig.subplots(1, n, squeeze=False)[0]
  if not series:
    axes[0].text(0.5, 0.5, f"no data for {', '.join(keys)}", ha="center",
                 va="center", transform=axes[0].transAxes)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
  for ax, (key, (xs, ys)) in zip(axes, series.items()):
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if smooth > 0.0:
      ax.plot(xs, ys, color="tab:blue", alpha=0.3, lw=1.0, label="raw")
      ax.plot(xs, _ema(ys, smooth), color="tab:blue", lw=1.8,
              label=f"EMA {smooth:g}")
      ax.legend(fontsize=FONT_SIZE - 1)
    else:
      ax.plot(xs, ys, color="tab:blue", lw=1.5)
    if np.all(ys > 0) and ys.max() > ys.min():
      ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel(key, fontsize=FONT_SIZE)
    ax.set_title(key, fontsize=FONT_SIZE + 1)
    ax.grid(True, which="both", alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
  fig.tight_layout()
  return save_figure(fig, path)



def confusion_matrix_figure(path: PathLike, cm: np.ndarray,
                            class_names: Sequence[str], *,
                            title: Optional[str] = None) -> str:
  """Annotated confusion-matrix heatmap, accuracy in the title.

  Args:
    path: Output PNG path.
    cm: [K, K] counts (or rates); rows are true classes, columns predictions.
    class_names: K class names.
    title: Title prefix (default "Confusion matrix").

  Returns:
    The path written.
  """
  cm = np.asarray(cm, dtype=np.float64)
  k = cm.shape[0]
  if cm.shape != (k, k) or len(class_names) != k:
    raise ValueError(
        f"confusion_matrix_figure: cm {cm.shape} vs {len(class_names)} "
        "class names.")
  total = cm.sum()
  accuracy = float(np.trace(cm) / total) if total > 0 else float("nan")
  size = max(4.0, 0.55 * k + 2.5)
  fig = new_figure((size + 1.0, size))
  ax = fig.subplots()
  im = ax.imshow(cm, cmap="Blues", vmin=0.0, interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xticklabels([str(c) for c in class_names], rotation=45, ha="right",
                     rotation_mode="anchor", fontsize=FONT_SIZE)
  ax.set_yticklabels([str(c) for c in class_names], fontsize=FONT_SIZE)
  ax.set_xlabel("Predicted", fontsize=FONT_SIZE + 1)
  ax.set_ylabel("True", fontsize=FONT_SIZE + 1)
  integer = np.all(np.equal(np.mod(cm, 1), 0))
  vmax = cm.max() if cm.size else 0.0
  font = max(6, FONT_SIZE - k // 6)
  for i in range(k):
    for j in range(k):
      v = cm[i, j]
      text = f"{int(v)}" if integer else f"{v:.2f}"
      ax.text(j, i, text, ha="center", va="center", fontsize=font,
              color="white" if vmax > 0 and v > 0.5 * vmax else "black")
  ax.set_title(f"{title or 'Confusion matrix'} "
               f"(accuracy = {100 * accuracy:.1f}%)",
               fontsize=FONT_SIZE + 2)
  fig.tight_layout()
  return save_figure(fig, path)


def curves_figure(path: PathLike,
                  series: Mapping[str, Tuple[np.ndarray, np.ndarray]], *,
                  xlabel: str, ylabel: str, logx: bool = False,
                  logy: bool = False, title: Optional[str] = None) -> str:
  """Generic line plot of named (x, y) series with markers and a legend.

  Args:
    path: Output PNG path.
    series: name -> (x [M], y [M]), e.g. quality vs NFE per sampler.
    xlabel: x-axis label.
    ylabel: y-axis label.
    logx: Log-scale x-axis.
    logy: Log-scale y-axis.
    title: Figure title.

  Returns:
    The path written.
  """
  fig = new_figure((6.0, 4.2))
  ax = fig.subplots()
  for name, (xs, ys) in series.items():
    xs = np.asarray(xs, np.float64).ravel()
    ys = np.asarray(ys, np.float64).ravel()
    marker = "o" if xs.size <= 50 else None
    ax.plot(xs, ys, marker=marker, ms=4, lw=1.6, label=str(name))
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel, fontsize=FONT_SIZE + 1)
  ax.set_ylabel(ylabel, fontsize=FONT_SIZE + 1)
  if title:
    ax.set_title(title, fontsize=FONT_SIZE + 2)
  ax.grid(True, which="both", alpha=0.3)
  if series:
    ax.legend(fontsize=FONT_SIZE)
  fig.tight_layout()
  return save_figure(fig, path)


def histograms_figure(path: PathLike, values: Mapping[str, np.ndarray], *,
                      xlabel: str, bins: int = 40,
                      title: Optional[str] = None) -> str:
  """Overlaid histograms of named samples on shared bins, each with its
  mean as a dashed line (e.g. per-image bits/dim of a model and a baseline).

  Args:
    path: Output PNG path.
    values: name -> values [N] (non-finite values are left out).
    xlabel: x-axis label.
    bins: the number of shared bins.
    title: Figure title.

  Returns:
    The path written.
  """
  finite = {k: np.asarray(v, np.float64).ravel() for k, v in values.items()}
  finite = {k: v[np.isfinite(v)] for k, v in finite.items()}
  pooled = np.concatenate([v for v in finite.values()] or [np.zeros(1)])
  edges = np.histogram_bin_edges(pooled if pooled.size else [0.0, 1.0],
                                 bins=bins)
  fig = new_figure((6.0, 4.2))
  ax = fig.subplots()
  for i, (name, v) in enumerate(finite.items()):
    color = f"C{i}"
    label = f"{name} (mean {v.mean():.3f})" if v.size else str(name)
    ax.hist(v, bins=edges, alpha=0.5, color=color, label=label)
    if v.size:
      ax.axvline(v.mean(), color=color, ls="--", lw=1.4)
  ax.set_xlabel(xlabel, fontsize=FONT_SIZE + 1)
  ax.set_ylabel("count", fontsize=FONT_SIZE + 1)
  if title:
    ax.set_title(title, fontsize=FONT_SIZE + 2)
  ax.grid(True, alpha=0.3)
  if finite:
    ax.legend(fontsize=FONT_SIZE)
  fig.tight_layout()
  return save_figure(fig, path)
