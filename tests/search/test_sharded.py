"""Sharded search (8 forced CPU devices; 2 processes x 4 devices) against single-device search.

The 8-device results come from one subprocess (tests/search/run_sharded.py) that computes every
case of ``run_sharded.CASES``; each is compared here with the existing single-device search
(``topk_blocked``, ``filtered_topk``, ``int8_topk``, ``asymmetric_topk``, ``hamming_topk``) and,
where scores are exact (dyadic float data, int8 and Hamming integers), with a numpy brute force.
Ids must be equal; scores equal (float32 ones within 1e-6 relative, as the per-shard scan and the
single-device scan multiply blocks of different shapes).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax import quant
from embedjax.quant.pq import PQParams
from embedjax.quant.scalar import UniformParams
from embedjax.search import sharded
from embedjax.search.exact import topk_blocked
from embedjax.search.filtered import filtered_topk
from embedjax.search.hamming import hamming_topk
from embedjax.search.multivector import topk_maxsim
from embedjax.search.quantized import asymmetric_topk, int8_topk

RUNNER = Path(__file__).with_name('run_sharded.py')
_spec = importlib.util.spec_from_file_location('run_sharded', RUNNER)
run_sharded = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_sharded)
CASES = run_sharded.CASES

# 557 = 8 x 70 - 3 rows: 70 per shard (for 'maxima', one 64-row chunk scanned in blocks plus a
# 6-row tail), the last shard ending in 3 padding rows.
N, D, Q = 557, 32, 9
TWO_PROCESS_CASES = ('float_allowed', 'float_equals', 'hamming_none', 'hamming_equals',
                     'maxsim_allowed')


def _make_data() -> dict:
  rng = np.random.default_rng(0)
  # Multiples of 1/16 of magnitude < 2: every inner product is exact in float32 and bfloat16
  # inputs, so float ties (duplicate rows) are exact ties on every device layout.
  x = np.clip(np.round(rng.standard_normal((N, D)) * 8), -31, 31) / 16
  x[300:310] = x[7]          # ties within a shard and across shards
  x[69:72] = x[140]          # across the boundary of shards 0 and 1
  x[N - 1] = x[0]            # the last real row, next to the padding
  q = np.clip(np.round(rng.standard_normal((Q, D)) * 8), -31, 31) / 16
  q[0] = x[7]
  x, q = x.astype(np.float32), q.astype(np.float32)
  int8 = quant.get('int8')
  # Ranges of width 255 / 16: a step of exactly 1/16, so the asymmetric int8 scores
  # (q * step) . level + q . (min + step / 2) are exact too. With a fitted (inexact) step, equal
  # rows can score a last bit apart depending on where they sit in a scanned block, in the
  # single-device search as in the sharded one, and their order then depends on the layout.
  p8 = UniformParams(ranges=jnp.asarray(np.stack([np.full(D, -8.0), np.full(D, 127 / 16)]),
                                        jnp.float32))
  pq4 = quant.product_quantizer(4, iters=3)
  calibration = rng.standard_normal((300, D)).astype(np.float32) / 2
  ppq = pq4.fit(calibration)
  # Multi-vector rows: 4 dyadic token vectors of 8 dims (exact MaxSim sums), a random subset
  # counted (at least the first), ties copied as for the single vectors.
  mv_x = (np.clip(np.round(rng.standard_normal((N, 4, 8)) * 8), -31, 31) / 16).astype(np.float32)
  mv_mask = ((rng.random((N, 4)) < 0.7) | (np.arange(4) == 0)).astype(np.int32)
  mv_x[300:310], mv_mask[300:310] = mv_x[7], mv_mask[7]
  mv_x[69:72], mv_mask[69:72] = mv_x[140], mv_mask[140]
  mv_q = (np.clip(np.round(rng.standard_normal((Q, 3, 8)) * 8), -31, 31) / 16).astype(np.float32)
  return dict(
      mv_x=mv_x, mv_mask=mv_mask, mv_q=mv_q, mv_qmask=np.ones((Q, 3), np.int32),
      x=x, q=q, mask=rng.random(N) < 0.4,
      category=rng.integers(0, 8, N).astype(np.int32),
      query_category=rng.integers(0, 8, Q).astype(np.int32),
      int8_ranges=np.asarray(p8.ranges),
      x_int8=np.asarray(int8.encode(p8, x)), q_int8=np.asarray(int8.encode(p8, q)),
      x_bits=np.packbits(x > 0, axis=-1), q_bits=np.packbits(q > 0, axis=-1),
      pq_codebooks=np.asarray(ppq.codebooks), x_pq=np.asarray(pq4.encode(ppq, x)))


@pytest.fixture(scope='module')
def data():
  return _make_data()


@pytest.fixture(scope='module')
def inputs(data, tmp_path_factory):
  path = tmp_path_factory.mktemp('sharded') / 'inputs.npz'
  np.savez(path, **data)
  return path


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return env


def _run(args, timeout=120):
  proc = subprocess.run([sys.executable, str(RUNNER), *args], env=_env(), capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope='module')
def eight(inputs):
  out = inputs.with_name('eight.npz')
  _run(['--inputs', str(inputs), '--out', str(out), '--devices', '8'])
  with np.load(out) as f:
    res = dict(f)
  assert int(res['devices']) == 8
  return res


# ------------------------------------------------------------------------------------------------
# References


def _keep(data, filt):
  """(Q, N) bool: rows each query may return."""
  if filt == 'none':
    return np.ones((Q, N), bool)
  if filt == 'allowed':
    return np.broadcast_to(data['mask'][None, :], (Q, N))
  return data['query_category'][:, None] == data['category'][None, :]


def _numpy_topk(scores, keep, k, missing):
  """Brute force: per query the k best allowed rows, ties by lower index (stable sort)."""
  out_s, out_i = [], []
  for s, ok in zip(scores, keep):
    rows = np.flatnonzero(ok)
    order = rows[np.argsort(-s[rows], kind='stable')][:k]
    pad = k - len(order)
    out_i.append(np.concatenate([order, -np.ones(pad, np.int64)]))
    out_s.append(np.concatenate([s[order], np.full(pad, missing, s.dtype)]))
  return np.stack(out_s), np.stack(out_i)


def _numpy_reference(data, kind, filt, k):
  """(scores, ids) of numpy brute force for the exactly-scored kinds, else None."""
  keep = _keep(data, filt)
  if kind in ('float', 'bf16'):
    s = data['q'].astype(np.float64) @ data['x'].astype(np.float64).T
    return _numpy_topk(s, keep, k, -np.inf)
  if kind == 'int8':
    s = data['q_int8'].astype(np.int64) @ data['x_int8'].astype(np.int64).T
    return _numpy_topk(s, keep, k, sharded.MISSING_INT8)
  if kind == 'maxsim':
    sims = np.einsum('qid,njd->qnij', data['mv_q'].astype(np.float64),
                     data['mv_x'].astype(np.float64))
    s = np.where(data['mv_mask'][None, :, None, :] != 0, sims, -np.inf).max(-1).sum(-1)
    return _numpy_topk(s, keep, k, -np.inf)
  if kind == 'hamming':
    qb = np.unpackbits(data['q_bits'], axis=1).astype(np.int64)
    xb = np.unpackbits(data['x_bits'], axis=1).astype(np.int64)
    dist = (qb[:, None, :] != xb[None, :, :]).sum(-1)
    s, i = _numpy_topk(-dist, keep, k, -sharded.MISSING_DISTANCE)
    return -s, i
  return None


def _single_device(data, kind, filt, k):
  """(scores, ids) of the existing single-device search, or None where it has no filtered form
  (int8 symmetric and Hamming: the numpy reference covers those)."""
  x = data['x']
  if kind in ('float', 'bf16', 'int8_asym', 'pq'):
    corpus = {'float': x, 'bf16': x.astype(jnp.bfloat16), 'int8_asym': data['x_int8'],
              'pq': data['x_pq']}[kind]
    qz = {'int8_asym': (quant.get('int8'), UniformParams(ranges=jnp.asarray(data['int8_ranges']))),
          'pq': (quant.get('pq4'), PQParams(codebooks=jnp.asarray(data['pq_codebooks'])))
          }.get(kind)
    if filt == 'none':
      if qz is None:
        return topk_blocked(data['q'], corpus, k)
      return asymmetric_topk(qz[0], qz[1], data['q'], corpus, k)
    if filt == 'allowed':
      pred, qa, ca = sharded.allowed, np.zeros(Q, np.int32), data['mask']
    else:
      pred, qa, ca = 'equals', data['query_category'], data['category']
    return filtered_topk(data['q'], corpus, k, predicate=pred, query_attrs=qa, corpus_attrs=ca,
                         quantizer=None if qz is None else qz[0],
                         params=None if qz is None else qz[1])
  if filt != 'none':
    return None
  if kind == 'maxsim':
    return topk_maxsim(data['mv_q'], data['mv_qmask'], data['mv_x'], data['mv_mask'], k)
  if kind == 'int8':
    return int8_topk(data['q_int8'], data['x_int8'], k)
  return hamming_topk(data['q_bits'], data['x_bits'], k)


def _check(data, results, name):
  kind, filt, k, _ = CASES[name]
  scores, ids = results[f'{name}/scores'], results[f'{name}/ids']
  assert ids.shape == scores.shape == (Q, k)
  assert np.all(ids < N), 'a padding row was returned'
  exact_scores = kind != 'int8_asym' and kind != 'pq'
  refs = [r for r in (_single_device(data, kind, filt, k), _numpy_reference(data, kind, filt, k))
          if r is not None]
  assert refs
  for ref_scores, ref_ids in refs:
    np.testing.assert_array_equal(ids, np.asarray(ref_ids), err_msg=name)
    if exact_scores:
      np.testing.assert_array_equal(scores, np.asarray(ref_scores).astype(scores.dtype),
                                    err_msg=name)
    else:
      np.testing.assert_allclose(scores, np.asarray(ref_scores), rtol=1e-6, atol=1e-6,
                                 err_msg=name)
  return ids


# ------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize('name', list(CASES))
def test_eight_devices_equal_one_device(data, eight, name):
  ids = _check(data, eight, name)
  kind, filt, k, _ = CASES[name]
  if filt == 'equals':  # most categories hold fewer than k = 80 rows: the sentinel shows
    assert np.any(ids == -1)
  if filt == 'none' and k > N // 8:
    assert np.all(ids >= 0)


def test_cases_cover_ties_and_k_beyond_a_shard(data):
  # The reference top-k of query 0 (a copy of row 7) holds the 11 exact ties 7, 300..309, in order.
  s, i = _numpy_reference(data, 'float', 'none', 80)
  np.testing.assert_array_equal(i[0, :11], [7] + list(range(300, 310)))
  assert np.all(s[0, :11] == s[0, 0])
  assert max(k for _, _, k, _ in CASES.values()) > sharded.rows_per_shard(N, 8)


def test_one_device_mesh_layout_and_errors(data):
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  assert sharded.process_rows(mesh, N) == (0, N)
  assert sharded.rows_per_shard(N, 8) == 70
  corpus = sharded.place_rows(mesh, data['x'], N)
  assert corpus.shape == (N, D)
  s, i = sharded.sharded_topk(mesh, data['q'], corpus, N, 5)
  ref_s, ref_i = topk_blocked(data['q'], data['x'], 5)
  np.testing.assert_array_equal(np.asarray(i), np.asarray(ref_i))
  np.testing.assert_array_equal(np.asarray(s), np.asarray(ref_s))
  with pytest.raises(ValueError, match='rows'):
    sharded.place_rows(mesh, data['x'][:-1], N)
  with pytest.raises(ValueError, match='rows'):
    sharded.sharded_topk(mesh, data['q'], corpus, N + 1, 5)
  with pytest.raises(ValueError, match='predicate'):
    sharded.sharded_topk(mesh, data['q'], corpus, N, 5, predicate='allowed')


@pytest.mark.slow
def test_two_processes_equal_one_device(data, inputs):
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  out = inputs.with_name('two.npz')
  procs = [subprocess.Popen(
      [sys.executable, str(RUNNER), '--inputs', str(inputs), '--out', str(out), '--devices', '4',
       '--process-id', str(i), '--num-processes', '2', '--port', str(port),
       '--cases', ','.join(TWO_PROCESS_CASES)],
      env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), '\n'.join(o[-3000:] for o in outs)
  with np.load(out) as f:
    res = dict(f)
  assert int(res['devices']) == 8 and int(res['processes']) == 2
  for name in TWO_PROCESS_CASES:
    _check(data, res, name)
