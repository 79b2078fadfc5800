"""The storage-tradeoff study's pure parts (scheme parsing, Pareto front, table) and the search
benchmark's code paths on tiny data (no timing checks)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from embedjax.paths import repo_root


def _load(rel: str, name: str):
  spec = importlib.util.spec_from_file_location(name, repo_root() / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_scheme_names_parse_and_every_configured_scheme_builds():
  study = _load('experiments/storage_tradeoff.py', 'storage_tradeoff_study')
  cfg = _load('configs/storage_tradeoff.py', 'storage_tradeoff_config').get_config()
  assert study.parse_scheme('binary') == ('binary', 'hamming')
  assert study.parse_scheme('trunc128_binary') == ('trunc128_binary', 'hamming')
  assert study.parse_scheme('binary_asym') == ('binary', 'asym')
  assert study.parse_scheme('binary_rescore') == ('binary', 'rescore')
  assert study.parse_scheme('binary_rescore_int8') == ('binary', 'rescore_int8')
  assert study.parse_scheme('int8_sym') == ('int8', 'int8_sym')
  assert study.parse_scheme('rb2') == ('rb2', 'asym')
  assert study.parse_scheme('pca50_float8') == ('pca50_float8', 'asym')
  for scheme in cfg.schemes:
    q = study.build(study.parse_scheme(scheme)[0], cfg)
    assert q.bytes_per_vector(384) >= 1, scheme
  assert study.build('pca50_float8', cfg).bytes_per_vector(384) == 192


def test_pareto_front_and_markdown():
  study = _load('experiments/storage_tradeoff.py', 'storage_tradeoff_study')
  pts = [(1536, 1.0, 'float32'), (384, 1.001, 'float8'), (384, 0.99, 'int8'), (48, 0.9, 'binary'),
         (96, 0.85, 'worse')]
  assert [n for _, _, n in study.pareto(pts)] == ['binary', 'float8']
  res = {'scifact': {}, 'stsb': {}}
  for b, r, n in pts:
    res['scifact'][n] = {'ndcg@10': r * 0.6, 'retention': r, 'bytes_per_vector': b,
                         'compression': 1536 / b}
    res['stsb'][n] = {'spearman': r * 0.8, 'retention': r, 'bytes_per_vector': b,
                      'compression': 1536 / b}
  table = study.markdown(res)
  assert table.splitlines()[2].startswith('| float32 | 1536 | 1.0x | 60.00 | 100.0% |')
  assert '| binary | 48 | 32x | 54.00 | 90.0% * |' in table
  # int8 is labelled asymmetric; a pre-fix run's STS-B binary_asym (a copy of binary) is withheld.
  assert '| int8 asymmetric (float32 query) | 384 |' in table
  res['scifact']['binary_asym'] = dict(res['scifact']['binary'], retention=0.95)
  res['stsb']['binary_asym'] = dict(res['stsb']['binary'])
  old = study.markdown(res)
  assert '| binary_asym | 48 | 32x | 54.00 | 95.0% * | n/a † | n/a † |' in old
  assert '† Not reported' in old
  new = study.markdown({**res, 'stsb_protocol': study.STSB_PROTOCOL})
  assert '| binary_asym | 48 | 32x | 54.00 | 95.0% * | 72.00 | 90.0%' in new and '†' not in new


def test_search_benchmark_paths_agree_on_tiny_data():
  bench = _load('benchmarks/search_cpu.py', 'bench_search_cpu')
  base = bench.synthetic(500, seed=1)
  queries = bench.synthetic(20, seed=2)
  assert base.shape == (500, 384)
  np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, rtol=1e-5)
  for index in ('flat', 'binary'):
    found = {}
    for lib in ('embedjax', 'faiss'):
      _, search = bench._build_and_search(lib, index, base, queries, threads=1)
      found[lib] = np.asarray(search())
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    r = {lib: bench._recall(f, truth) for lib, f in found.items()}
    assert r['embedjax'] == r['faiss'], (index, r)
  bound = bench.flat_memory_bound(1_000_000)
  assert bound['corpus_bytes'] == 1_000_000 * 384 * 4


def test_stsb_binary_asym_is_float_against_bits_not_a_copy_of_binary():
  """STS-B ``binary_asym`` scores the first sentence float32 against the second one's bits;
  ``binary`` stores both. Checked against scipy's Spearman of numpy float64 cosines."""
  from types import SimpleNamespace

  from scipy.stats import spearmanr
  study = _load('experiments/storage_tradeoff.py', 'storage_tradeoff_study')
  cfg = _load('configs/storage_tradeoff.py', 'storage_tradeoff_config').get_config()
  rng = np.random.default_rng(0)
  # Pair i's second sentence has the signs of its first flipped on dims 0..i: Hamming distance
  # i + 1, all different, so the symmetric similarities have no ties to break.
  x1 = rng.standard_normal((30, 64))
  flip = np.where(np.arange(64)[None] <= np.arange(30)[:, None], -1.0, 1.0)
  x2 = np.abs(x1 + 0.5 * rng.standard_normal((30, 64))) * np.sign(x1) * flip
  x = np.concatenate([x1, x2]).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  a, b = np.arange(30), np.arange(30, 60)
  gold = rng.random(30) * 5
  emb = {'stsb_test': x, 'stsb_pairs': (a, b), 'stsb': SimpleNamespace(scores=gold)}
  assert study.sts_asymmetric('binary_asym') and not study.sts_asymmetric('binary')
  assert not study.sts_asymmetric('rb2_asym') and not study.sts_asymmetric('int8')
  got = {}
  for scheme in ('binary', 'binary_asym'):
    q = study.build(study.parse_scheme(scheme)[0], cfg)
    got[scheme] = study.sts_eval(scheme, q, q.fit(x), emb)
  signs = np.where(x > 0, 1.0, -1.0)
  d = x.shape[1]
  # Both sides bits: cosine of +-1 vectors = 1 - 2 Hamming / D, exact (ties stay ties).
  want_sym = spearmanr(1 - 2 * (signs[a] != signs[b]).sum(1) / d, gold).statistic
  # First sentence float32 against the second one's bits: x1 . s2 / (|x1| sqrt(D)).
  x64 = x.astype(np.float64)
  cos_asym = (x64[a] * signs[b]).sum(1) / (np.linalg.norm(x64[a], axis=1) * np.sqrt(d))
  want_asym = spearmanr(cos_asym, gold).statistic
  assert got['binary'] == pytest.approx(want_sym, abs=1e-9)
  assert got['binary_asym'] == pytest.approx(want_asym, abs=1e-9)
  assert abs(got['binary_asym'] - got['binary']) > 1e-3
