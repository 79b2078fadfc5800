"""embedjax.plots: every plot's artists hold exactly its input data, the Pareto front equals a
brute-force front, figures save as PNG, and embedjax imports without matplotlib. Also the
experiments' figures drawn from the committed results files."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from embedjax import plots
from embedjax.paths import repo_root

matplotlib = pytest.importorskip('matplotlib')
matplotlib.use('Agg')  # this process only; the plots themselves never touch pyplot or backends

REPO = repo_root()


def brute_force_front(x, y, better_x='lower'):
  """Indices i no j dominates (x at least as good, y at least as high, one strictly), by x."""
  x = np.asarray(x, np.float64) * (1 if better_x == 'lower' else -1)
  y = np.asarray(y, np.float64)
  keep = [i for i in range(len(x))
          if not np.any((x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i])))]
  return sorted(keep, key=lambda i: x[i] * (1 if better_x == 'lower' else -1))


@pytest.mark.parametrize('better_x', ['lower', 'higher'])
def test_pareto_front_equals_brute_force(better_x):
  rng = np.random.default_rng(0)
  for _ in range(50):
    n = int(rng.integers(1, 30))
    x = rng.integers(1, 12, n).astype(float)  # few distinct x: ties on x are common
    y = rng.normal(size=n).round(1) + np.arange(n) * 1e-6  # ties on y up to a nudge, no duplicates
    got = plots.pareto_front(x, y, better_x=better_x).tolist()
    assert got == brute_force_front(x, y, better_x), (x, y)


def test_docstring_examples():
  import doctest
  failures, tried = doctest.testmod(plots, verbose=False)
  assert tried >= 1 and failures == 0


def test_pareto_front_hand_values_and_bad_input():
  # bytes: float32 1536 (1.0), float8 384 (1.001), int8 384 (0.99), binary 48 (0.9), 96 (0.85)
  front = plots.pareto_front([1536, 384, 384, 48, 96], [1.0, 1.001, 0.99, 0.9, 0.85])
  assert front.tolist() == [3, 1]
  # compression ratios: higher is better; the same points as 1536 / bytes
  assert plots.pareto_front([1, 4, 4, 32, 16], [1.0, 1.001, 0.99, 0.9, 0.85],
                            better_x='higher').tolist() == [1, 3]
  assert plots.pareto_front([5.0, 5.0], [1.0, 1.0]).tolist() == [0]  # equal points: the first
  with pytest.raises(ValueError, match='finite'):
    plots.pareto_front([1.0, np.nan], [1.0, 2.0])
  with pytest.raises(ValueError, match='one length'):
    plots.pareto_front([1.0, 2.0], [1.0])


def _points():
  rng = np.random.default_rng(1)
  names = [f's{i}' for i in range(12)]
  x = 2.0 ** rng.integers(3, 11, 12)
  y = 100 * rng.uniform(0.6, 1.0, 12)
  groups = ['PQ', 'binary', 'float'] * 4
  return [{'name': n, 'x': float(a), 'y': float(b), 'group': g}
          for n, a, b, g in zip(names, x, y, groups)]


def _front_line(ax):
  (line,) = [ln for ln in ax.get_lines() if ln.get_label() == 'Pareto front']
  return line


def test_pareto_plot_draws_every_point_the_front_and_its_names():
  pts = _points()
  fig = plots.pareto_plot(pts, xlabel='bytes', ylabel='retention (%)')
  assert isinstance(fig, matplotlib.figure.Figure)
  (ax,) = fig.axes
  # One scatter per group, in first-appearance order, holding that group's points.
  assert [c.get_label() for c in ax.collections] == ['PQ', 'binary', 'float']
  for c in ax.collections:
    want = sorted((p['x'], p['y']) for p in pts if p['group'] == c.get_label())
    np.testing.assert_array_equal(sorted(map(tuple, c.get_offsets())), want)
  front = brute_force_front([p['x'] for p in pts], [p['y'] for p in pts])
  line = _front_line(ax)
  np.testing.assert_array_equal(line.get_xdata(), [pts[i]['x'] for i in front])
  np.testing.assert_array_equal(line.get_ydata(), [pts[i]['y'] for i in front])
  assert line.get_drawstyle() == 'steps-post'
  assert sorted(t.get_text() for t in ax.texts) == sorted(pts[i]['name'] for i in front)
  assert ax.get_xscale() == 'log'


def test_pareto_plot_connected_groups_with_error_bars_and_ratios():
  pts = [{'name': f'{m} {b}', 'x': b, 'y': y, 'yerr': e, 'group': m}
         for m, rows in (('hashing', [(10, .6, .01), (100, .7, .02)]),
                         ('qr', [(12, .65, .0), (80, .75, .03), (200, .76, .01)]))
         for b, y, e in rows]
  fig = plots.pareto_plot(pts, connect=True, annotate='none', reference_x=250, log_base=10)
  (ax,) = fig.axes
  assert not ax.texts
  for cont, m in zip(ax.containers, ('hashing', 'qr')):
    data_line, _, (bars,) = cont.lines
    mine = [p for p in pts if p['group'] == m]
    np.testing.assert_array_equal(data_line.get_xdata(), [p['x'] for p in mine])
    np.testing.assert_array_equal(data_line.get_ydata(), [p['y'] for p in mine])
    half = [abs(seg[1, 1] - seg[0, 1]) / 2 for seg in bars.get_segments()]
    np.testing.assert_allclose(half, [p['yerr'] for p in mine], atol=1e-12)
  assert [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ':'] == [250]
  # The same points as compression ratios (higher is better): the front is the mirrored one.
  ratios = [dict(p, x=1000 / p['x']) for p in pts]
  line = _front_line(plots.pareto_plot(ratios, better_x='higher').axes[0])
  front = brute_force_front([p['x'] for p in ratios], [p['y'] for p in ratios], 'higher')
  np.testing.assert_allclose(line.get_xdata(), [ratios[i]['x'] for i in front])
  assert line.get_drawstyle() == 'steps-pre'


def test_pareto_plot_sixteen_connected_groups_all_look_different():
  # the table study plots 16 families: no two may share colour, marker and line style
  pts = [{'name': f'g{g} {b}', 'x': b, 'y': g + b / 10, 'group': f'g{g}'}
         for g in range(16) for b in (1, 10)]
  (ax,) = plots.pareto_plot(pts, connect=True, annotate='none').axes
  looks = [(tuple(c.lines[0].get_color()), c.lines[0].get_marker(), c.lines[0].get_linestyle())
           for c in ax.containers]
  assert len(looks) == 16 and len(set(looks)) == 16
  assert len({look[0] for look in looks}) == 16  # tab20: a colour of its own each


def test_pareto_plot_bad_points():
  with pytest.raises(ValueError, match="point 1 .* lacks field 'y'"):
    plots.pareto_plot([{'name': 'a', 'x': 1, 'y': 2}, {'name': 'b', 'x': 3}])
  with pytest.raises(ValueError, match='not in group_order'):
    plots.pareto_plot([{'name': 'a', 'x': 1, 'y': 2, 'group': 'g'}], group_order=['h'])


def test_critical_n_plot_points_and_fitted_curves():
  dims = np.arange(4, 16)
  ns = 0.01 * dims ** 3 + 2 * dims + 3 + np.random.default_rng(0).normal(0, 0.5, dims.size)
  fig = plots.critical_n_plot(dims, ns)
  points, curve = fig.axes[0].get_lines()
  np.testing.assert_array_equal(points.get_xdata(), dims)
  np.testing.assert_array_equal(points.get_ydata(), ns)
  grid = np.linspace(4, 15, 200)
  # numpy's legacy polyfit/polyval (highest degree first) as the reference least-squares fit
  np.testing.assert_allclose(curve.get_ydata(), np.polyval(np.polyfit(dims, ns, 3), grid),
                             rtol=1e-9, atol=1e-9)
  # Given coefficients (increasing degree) are drawn as they are, in order, with their labels.
  fig = plots.critical_n_plot([2, 4], [3, 9], fits={'ours': [1, 2], 'theirs': [0, 0, 0.5]})
  _, ours, theirs = fig.axes[0].get_lines()
  g = np.linspace(2, 4, 200)
  np.testing.assert_allclose(ours.get_ydata(), 1 + 2 * g)
  np.testing.assert_allclose(theirs.get_ydata(), 0.5 * g * g)
  assert (ours.get_label(), ours.get_linestyle(), theirs.get_linestyle()) == ('ours', '-', '--')
  with pytest.raises(ValueError, match='more than 3 points'):
    plots.critical_n_plot([2, 4, 6], [3, 9, 20])


def test_layer_dim_grid_holds_the_values_and_annotates_each_measured_cell():
  values = np.array([[0.31, 0.42, 0.47], [0.52, np.nan, 0.655]])
  fig = plots.layer_dim_grid(values, layers=[3, 6], dims=[64, 128, 384], metric='nDCG@10',
                             fmt='.2f')
  ax = fig.axes[0]
  (im,) = ax.get_images()
  data = im.get_array()
  np.testing.assert_array_equal(data.mask, np.isnan(values))
  np.testing.assert_array_equal(data.filled(-1), np.where(np.isnan(values), -1, values))
  cells = {(int(round(t.get_position()[1])), int(round(t.get_position()[0]))): t.get_text()
           for t in ax.texts}
  assert cells == {(0, 0): '0.31', (0, 1): '0.42', (0, 2): '0.47', (1, 0): '0.52', (1, 2): '0.66'}
  assert [t.get_text() for t in ax.get_xticklabels()] == ['64', '128', '384']
  assert [t.get_text() for t in ax.get_yticklabels()] == ['3', '6']
  assert fig.axes[1].get_ylabel() == 'nDCG@10'  # the colour bar
  with pytest.raises(ValueError, match=r'\(2, 3\), got \(3, 2\)'):
    plots.layer_dim_grid(values.T, layers=[3, 6], dims=[64, 128, 384])


def _write_metrics(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return path


def test_read_metrics_and_training_curve(tmp_path):
  # The records the training loop writes: eval before training (step 0), train every step,
  # eval at steps 2 and 4.
  recs = [{'step': 0, 'eval/sts_spearman@32': 0.1}]
  for s in range(1, 5):
    recs.append({'step': s, 'train/loss': 2.0 / s, 'train/pairs_per_s': 10.0 * s})
    if s % 2 == 0:
      recs.append({'step': s, 'eval/sts_spearman@32': 0.1 + s / 10})
  _write_metrics(tmp_path / 'metrics.jsonl', recs)
  assert plots.read_metrics(tmp_path) == recs  # the workdir or the file
  fig = plots.training_curve(plots.read_metrics(tmp_path / 'metrics.jsonl'))
  (loss,), (ev,) = fig.axes[0].get_lines(), fig.axes[1].get_lines()
  np.testing.assert_array_equal(loss.get_xdata(), [1, 2, 3, 4])
  np.testing.assert_allclose(loss.get_ydata(), [2.0, 1.0, 2 / 3, 0.5])
  np.testing.assert_array_equal(ev.get_xdata(), [0, 2, 4])
  np.testing.assert_allclose(ev.get_ydata(), [0.1, 0.3, 0.5])
  assert (loss.get_label(), ev.get_label()) == ('loss', 'sts_spearman@32')
  # Without evaluations: one panel; an unknown key is named.
  assert len(plots.training_curve([r for r in recs if 'train/loss' in r]).axes) == 1
  with pytest.raises(ValueError, match="no record has 'train/acc'"):
    plots.training_curve(recs, train_keys=['train/acc'])


def test_read_metrics_names_the_bad_line(tmp_path):
  p = tmp_path / 'm.jsonl'
  p.write_text('{"step": 1, "train/loss": 1.0}\n{"train/loss": 2.0}\n')
  with pytest.raises(ValueError, match=r'm\.jsonl:2: field "step" missing'):
    plots.read_metrics(p)
  p.write_text('{"step": 1, "train/loss": "x"}\n')
  with pytest.raises(ValueError, match=r"m\.jsonl:1: field 'train/loss' is not a number"):
    plots.read_metrics(p)
  p.write_text('{"step": 1,\n')
  with pytest.raises(ValueError, match=r'm\.jsonl:1: not JSON'):
    plots.read_metrics(p)
  with pytest.raises(FileNotFoundError, match='no such metrics file'):
    plots.read_metrics(tmp_path / 'none')


def test_save_png_and_panels(tmp_path):
  fig, axes = plots.subplots(1, 2, figsize=(4, 2))
  plots.pareto_plot(_points(), ax=axes[0])
  plots.critical_n_plot([1, 2, 3, 4], [2, 5, 9, 15], ax=axes[1])
  assert axes[0].figure is fig and len(fig.axes) == 2
  path = plots.save_png(fig, tmp_path / 'sub' / 'fig.png', dpi=50)
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  import matplotlib.image
  assert matplotlib.image.imread(path).shape[:2] == (100, 200)  # figsize x dpi
  assert [p.name for p in path.parent.iterdir()] == ['fig.png']  # no temporary left


def test_embedjax_imports_without_matplotlib():
  code = ("import sys; sys.modules['matplotlib'] = None\n"
          "import embedjax, embedjax.plots as p\n"
          "assert p.pareto_front([2, 1], [1, 0]).tolist() == [1, 0]\n"
          "try:\n  p.pareto_plot([{'name': 'a', 'x': 1, 'y': 1}])\n"
          "except ImportError as e:\n  print(e)\n")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == plots.MISSING_MATPLOTLIB
  # And importing the module does not import matplotlib (it stays lazy).
  code = "import sys, embedjax.plots; print('matplotlib' in sys.modules)"
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == 'False', out.stderr


# ----------------------------------------------------------------------------------------------
# The experiments' figures, from the committed results


def _load(rel: str, name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _results(rel):
  path = REPO / rel
  if not path.is_file():
    pytest.skip(f'{rel} is not committed')
  return json.loads(path.read_text())


def test_storage_tradeoff_figure_from_committed_results():
  study = _load('experiments/storage_tradeoff.py', 'storage_tradeoff_plot')
  res = _results('results/storage_tradeoff.json')
  fig = study.figure(res)
  for ax, task in zip(fig.axes, ('scifact', 'stsb')):
    rows = {n: v for n, v in res[task].items() if n not in study.stale_sts(res)}
    drawn = sorted(tuple(o) for c in ax.collections for o in c.get_offsets())
    assert drawn == sorted((v['bytes_per_vector'], 100 * v['retention']) for v in rows.values())
    front = study.pareto([(v['bytes_per_vector'], v['retention'], n) for n, v in rows.items()])
    assert sorted(t.get_text() for t in ax.texts) == sorted(n for _, _, n in front)
    np.testing.assert_allclose(_front_line(ax).get_ydata(), [100 * r for _, r, _ in front])


def test_limit_critical_n_figure_from_committed_results():
  lfe = _load('experiments/limit_free_embedding.py', 'limit_free_embedding_plot')
  res = _results('results/limit/critical_n.json')
  points, ours, paper = lfe.figure(res).axes[0].get_lines()
  np.testing.assert_array_equal(points.get_xdata(), [int(d) for d in res['critical_n']])
  np.testing.assert_array_equal(points.get_ydata(), list(res['critical_n'].values()))
  d = ours.get_xdata()
  np.testing.assert_allclose(ours.get_ydata(), sum(c * d ** i for i, c in enumerate(res['fit'])))
  np.testing.assert_allclose(paper.get_ydata(),
                             sum(c * d ** i for i, c in enumerate(lfe.PAPER_FIT)))


def test_table_compression_figure_from_committed_results():
  tc = _load('experiments/table_compression.py', 'table_compression_plot')
  res = _results('results/table_compression.json')
  main = [s for s in res['summary'] if not s['method'].startswith('model:')]
  feasible = [s for s in main if s['feasible']]
  ax = tc.pareto_figure(main, res['full_table_bytes']).axes[0]
  drawn = sorted((float(x), float(y)) for c in ax.containers
                 for x, y in zip(c.lines[0].get_xdata(), c.lines[0].get_ydata()))
  assert drawn == sorted((s['bytes'], s['test_auc_mean']) for s in feasible)
  front = brute_force_front([s['bytes'] for s in feasible], [s['test_auc_mean'] for s in feasible])
  # Two methods (int8, lpt) share a front point exactly: the front line passes it once.
  want = sorted({(feasible[i]['bytes'], feasible[i]['test_auc_mean']) for i in front})
  line = _front_line(ax)
  assert list(zip(line.get_xdata(), line.get_ydata())) == want
