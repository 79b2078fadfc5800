"""The project's shared plots: plain data (dicts, lists, arrays) in, a matplotlib Figure out.

  pareto_front(x, y)          indices of the points no other point beats on both axes (numpy only)
  pareto_plot(points)         storage (bytes per vector, or compression ratio) vs quality, with the
                              Pareto front drawn and its points labelled
  critical_n_plot(dims, ns)   LIMIT's critical-n vs embedding dimension, with polynomial fits
  layer_dim_grid(values, ...) a metric over (truncation layer, Matryoshka dimension), annotated
  read_metrics(path)          a training run's ``metrics.jsonl`` as a list of records
  training_curve(records)     training loss and evaluation metrics vs step
  subplots(...)               a new Figure and its Axes, to compose several plots (``ax=``)
  save_png(fig, path)         atomic PNG write

matplotlib is optional (the ``notebooks`` extra): it is imported inside the functions, so importing
this module, and embedjax, works without it. Figures are ``matplotlib.figure.Figure`` objects made
without pyplot: nothing is registered globally, nothing needs closing, and any backend (or none)
can save them. In a notebook, run ``%matplotlib inline`` once; a Figure that ends a cell, or is
passed to ``display``, then shows as an image.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from embedjax.io import atomic_write_bytes

MISSING_MATPLOTLIB = "embedjax.plots needs matplotlib: pip install 'embedjax[notebooks]'"
# One marker per group when groups are joined by lines: several groups often share a point.
MARKERS = 'os^Dv<>PX*'
# Line styles of successive fitted curves.
FIT_STYLES = ('-', '--', ':', '-.')


def _matplotlib():
  """The matplotlib module, or ImportError with the one line that says how to install it."""
  try:
    import matplotlib
    import matplotlib.figure
  except ImportError:
    raise ImportError(MISSING_MATPLOTLIB) from None
  return matplotlib


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (6.4, 4.8),
             **kwargs):
  """A new Figure (not registered with pyplot) and its Axes, as ``Figure.subplots`` returns them."""
  fig = _matplotlib().figure.Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def _axes(ax, figsize):
  """``ax`` and its figure, or a new single-Axes figure."""
  if ax is not None:
    return ax.figure, ax
  return subplots(figsize=figsize)


def save_png(fig, path: str | os.PathLike, *, dpi: int = 130) -> Path:
  """Writes ``fig`` as PNG to ``path`` atomically (rendered in memory, then ``atomic_write_bytes``)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=dpi)
  return atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# Pareto front


def pareto_front(x, y, *, better_x: str = 'lower') -> np.ndarray:
  """Indices of the Pareto-optimal points, in increasing ``x``.

  Quality ``y`` is better higher; ``x`` is better 'lower' (bytes per vector) or 'higher'
  (compression ratio). A point is on the front when no other point is at least as good on both
  axes and strictly better on one; of exactly equal points the first listed is kept.

  Args:
    x, y: (N,) finite numbers.
  Returns:
    (F,) int64 indices into the inputs.

  >>> pareto_front([48, 384, 1536, 96], [0.90, 1.0, 1.0, 0.85]).tolist()
  [0, 1]
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f'pareto_front: x and y must be (N,) of one length, got {x.shape} and '
                     f'{y.shape}')
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError('pareto_front: x and y must be finite')
  if better_x not in ('lower', 'higher'):
    raise ValueError(f"pareto_front: better_x must be 'lower' or 'higher', got {better_x!r}")
  sign = 1.0 if better_x == 'lower' else -1.0
  # Best x first, best y first among equal x (a stable sort: equal points keep their order); a
  # point is on the front when it beats the quality of every point with an x at least as good.
  order = np.lexsort((-y, sign * x))
  front, best = [], -np.inf
  for i in order:
    if y[i] > best:
      front.append(i)
      best = y[i]
  front = np.asarray(front, np.int64)
  return front[np.argsort(x[front], kind='stable')]


def _check_points(points: Sequence[Mapping[str, Any]]) -> None:
  if not points:
    raise ValueError('pareto_plot: no points')
  for i, p in enumerate(points):
    for field in ('name', 'x', 'y'):
      if field not in p:
        raise ValueError(f'pareto_plot: point {i} ({dict(p)!r}) lacks field {field!r}')


def pareto_plot(points: Sequence[Mapping[str, Any]], *, better_x: str = 'lower',
                xlabel: str = 'bytes per vector', ylabel: str = 'quality', title: str = '',
                log_base: float | None = 2, annotate: str = 'front', connect: bool = False,
                group_order: Sequence[str] | None = None, reference_x: float | None = None,
                ylim: tuple[float, float] | None = None, legend_loc: str = 'lower right',
                legend_columns: int = 1, ax=None, figsize: tuple[float, float] = (7, 5)):
  """Storage vs quality of named points, with their Pareto front.

  Args:
    points: one mapping per point: 'name' (str), 'x' (bytes per vector, or compression ratio),
      'y' (quality, higher is better); optional 'group' (colour and legend entry, e.g. a scheme
      family) and 'yerr' (an error bar, e.g. a std over seeds).
    better_x: 'lower' for storage sizes, 'higher' for compression ratios.
    log_base: base of the logarithmic x axis; None for a linear one.
    annotate: which points get their name written beside them: 'front', 'all' or 'none'.
    connect: join each group's points by a line (a method swept over budgets), with one marker
      shape per group.
    group_order: the groups' order in the legend and colour cycle (default: first appearance).
    reference_x: draw a vertical dotted line there (e.g. the uncompressed size).
    ax: draw into these Axes (e.g. a panel of ``subplots``) instead of a new figure.
  Returns:
    The Figure. The front is the Line2D labelled 'Pareto front'; names are the Axes' texts.
  """
  _check_points(points)
  if annotate not in ('front', 'all', 'none'):
    raise ValueError(f"pareto_plot: annotate must be 'front', 'all' or 'none', got {annotate!r}")
  matplotlib = _matplotlib()
  fig, ax = _axes(ax, figsize)
  x = np.array([float(p['x']) for p in points])
  y = np.array([float(p['y']) for p in points])
  groups = [p.get('group') for p in points]
  order = list(group_order) if group_order is not None else list(dict.fromkeys(groups))
  unknown = set(groups) - set(order)
  if unknown:
    raise ValueError(f'pareto_plot: groups {sorted(map(str, unknown))} are not in group_order')
  # tab10 repeats after ten groups (and MARKERS with it): past ten, tab20's twenty colours, and
  # the second ten groups' lines dashed, so that no two groups look alike
  colors = matplotlib.colormaps['tab10' if len(order) <= 10 else 'tab20'].colors
  for gi, group in enumerate(order):
    sel = sorted((i for i, g in enumerate(groups) if g == group), key=lambda i: x[i])
    if not sel:
      continue
    color = colors[gi % len(colors)]
    line = '-' if gi // len(MARKERS) % 2 == 0 else '--'
    yerr = ([float(points[i].get('yerr', 0.0)) for i in sel]
            if any('yerr' in points[i] for i in sel) else None)
    if connect:
      ax.errorbar(x[sel], y[sel], yerr=yerr, marker=MARKERS[gi % len(MARKERS)], ms=6, mfc='none',
                  capsize=2, lw=1.2, ls=line, color=color, label=group)
    elif yerr is not None:
      ax.errorbar(x[sel], y[sel], yerr=yerr, fmt='o', ms=4.5, capsize=2, color=color, alpha=0.85,
                  label=group)
    else:
      ax.scatter(x[sel], y[sel], s=22, color=color, alpha=0.85, label=group)
  front = pareto_front(x, y, better_x=better_x)
  # Lower-is-better x: the best quality within a size is a step held to the right; for ratios
  # (higher is better) it is held to the left.
  ax.step(x[front], y[front], where='post' if better_x == 'lower' else 'pre', color='k', lw=1,
          ls='--', alpha=0.7, label='Pareto front')
  named = {'front': front, 'all': range(len(points)), 'none': ()}[annotate]
  for i in named:
    ax.annotate(str(points[i]['name']), (x[i], y[i]), fontsize=7, xytext=(3, -9),
                textcoords='offset points')
  if reference_x is not None:
    ax.axvline(reference_x, color='grey', lw=0.6, ls=':')
  if log_base:
    ax.set_xscale('log', base=log_base)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8, loc=legend_loc, ncol=legend_columns)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------------------------
# Critical-n of free embeddings


def critical_n_plot(dims, critical_n, *, fits: Mapping[str, Sequence[float]] | None = None,
                    degree: int = 3, label: str = 'critical-n',
                    xlabel: str = 'embedding dimension d',
                    ylabel: str = 'largest n with all top-2 sets solved',
                    title: str = 'Free embeddings, k = 2', ax=None,
                    figsize: tuple[float, float] = (6, 4)):
  """Critical-n against dimension, with polynomial curves over the measured range.

  Args:
    dims, critical_n: (P,) dimensions and their critical n (drawn as points).
    fits: curve label -> polynomial coefficients in increasing degree (c0 + c1 d + c2 d^2 ...,
      numpy.polynomial's order), drawn in that order with styles '-', '--', ':', '-.'. None: a
      least-squares polynomial of ``degree`` is fitted to the points here.
  Returns:
    The Figure: the points are the first Line2D, then one line per fit (200 points each).
  """
  dims = np.asarray(dims, np.float64)
  ns = np.asarray(critical_n, np.float64)
  if dims.ndim != 1 or dims.shape != ns.shape or dims.size == 0:
    raise ValueError(f'critical_n_plot: dims and critical_n must be (P,) of one length, '
                     f'got {dims.shape} and {ns.shape}')
  if fits is None:
    if dims.size <= degree:
      raise ValueError(f'critical_n_plot: a degree-{degree} fit needs more than {degree} points, '
                       f'got {dims.size}')
    fits = {f'degree-{degree} fit': np.polynomial.polynomial.polyfit(dims, ns, degree)}
  fig, ax = _axes(ax, figsize)
  ax.plot(dims, ns, 'o', label=label)
  grid = np.linspace(dims.min(), dims.max(), 200)
  for i, (name, coef) in enumerate(fits.items()):
    curve = np.polynomial.polynomial.polyval(grid, np.asarray(coef, np.float64))
    ax.plot(grid, curve, FIT_STYLES[i % len(FIT_STYLES)], label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------------------------
# Layer x dimension grid


def layer_dim_grid(values, layers: Sequence[int], dims: Sequence[int], *, metric: str = '',
                   fmt: str = '.3f', cmap: str = 'viridis', title: str = '', ax=None,
                   figsize: tuple[float, float] | None = None):
  """A heatmap of a metric over (truncation layer, Matryoshka dimension), each cell annotated.

  Args:
    values: (L, D) metric, row i for ``layers[i]``, column j for ``dims[j]``; NaN = not measured
      (left blank).
    layers: (L,) layer numbers (y axis, increasing upwards); dims: (D,) dimensions (x axis).
    fmt: format spec of the cell texts.
  Returns:
    The Figure: its AxesImage holds ``values`` (NaN masked), one text per measured cell.
  """
  v = np.asarray(values, np.float64)
  if v.ndim != 2 or v.shape != (len(layers), len(dims)):
    raise ValueError(f'layer_dim_grid: values must be (len(layers), len(dims)) = '
                     f'({len(layers)}, {len(dims)}), got {v.shape}')
  masked = np.ma.masked_invalid(v)
  if masked.count() == 0:
    raise ValueError('layer_dim_grid: no finite value')
  fig, ax = _axes(ax, figsize or (1.1 * len(dims) + 2.5, 0.6 * len(layers) + 1.8))
  im = ax.imshow(masked, origin='lower', aspect='auto', cmap=cmap)
  lo, hi = float(masked.min()), float(masked.max())
  for i in range(v.shape[0]):
    for j in range(v.shape[1]):
      if np.isfinite(v[i, j]):
        # Dark text on the light end of the colour map, light text on the dark end.
        light = hi > lo and (v[i, j] - lo) / (hi - lo) > 0.6
        ax.text(j, i, format(v[i, j], fmt), ha='center', va='center', fontsize=8,
                color='black' if light else 'white')
  ax.set_xticks(range(len(dims)), [str(d) for d in dims])
  ax.set_yticks(range(len(layers)), [str(n) for n in layers])
  ax.set_xlabel('Matryoshka dimension')
  ax.set_ylabel('truncation layer')
  ax.set_title(title)
  fig.colorbar(im, ax=ax, label=metric)
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------------------------
# Training curves


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
  """The records of a training run's ``metrics.jsonl`` (``path`` is the file or the workdir).

  Each record is {'step': int, 'train/<metric>' or 'eval/<metric>': float, ...}, as
  ``embedjax.train.loop.train`` writes them. A malformed line raises ValueError naming it.
  """
  path = Path(path)
  if path.is_dir():
    path = path / 'metrics.jsonl'
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such metrics file')
  records = []
  for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}:{number}: not JSON ({e.msg})') from None
    if not isinstance(record, dict):
      raise ValueError(f'{path}:{number}: a record must be a JSON object')
    if not isinstance(record.get('step'), int):
      raise ValueError(f'{path}:{number}: field "step" missing or not an integer')
    for key, value in record.items():
      if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f'{path}:{number}: field {key!r} is not a number')
    records.append(record)
  return records


def _series(records: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
  rows = sorted((r['step'], r[key]) for r in records if key in r)
  if not rows:
    raise ValueError(f'training_curve: no record has {key!r}')
  steps, values = zip(*rows)
  return np.asarray(steps), np.asarray(values, np.float64)


def training_curve(records: Sequence[Mapping[str, float]], *,
                   train_keys: Sequence[str] = ('train/loss',),
                   eval_keys: Sequence[str] | None = None, title: str = '',
                   figsize: tuple[float, float] | None = None):
  """Training metrics (left) and evaluation metrics (right, if any) against step.

  Args:
    records: dicts with 'step' and metric values, e.g. ``read_metrics(workdir)``.
    train_keys: the training metrics drawn on the left.
    eval_keys: the evaluation metrics drawn on the right (default: every 'eval/...' key, in
      order of first appearance; none -> a single panel).
  Returns:
    The Figure: one Line2D per key, x = steps, y = values, in step order.
  """
  if eval_keys is None:
    eval_keys = list(dict.fromkeys(k for r in records for k in r if k.startswith('eval/')))
  panels = [('training', list(train_keys))]
  if eval_keys:
    panels.append(('evaluation', list(eval_keys)))
  fig, axes = subplots(1, len(panels), figsize=figsize or (5.5 * len(panels), 4), squeeze=False)
  for ax, (kind, keys) in zip(axes[0], panels):
    for key in keys:
      steps, values = _series(records, key)
      ax.plot(steps, values, '-' if kind == 'training' else 'o-', label=key.split('/', 1)[-1])
    ax.set_xlabel('step')
    ax.set_ylabel(keys[0].split('/', 1)[-1] if len(keys) == 1 else f'{kind} metric')
    ax.set_title(f'{title}: {kind}' if title else kind)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
