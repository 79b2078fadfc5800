"""Runs the sharded-search cases in their own process (device count / distributed set before jax).

python tests/search/run_sharded.py --inputs in.npz --out out.npz [--devices 8]
    [--process-id I --num-processes N --port P] [--cases name,name]
Each process places its contiguous slice of the corpus rows (``process_rows``) on a ("data",) mesh
over all devices of all processes; process 0 writes every case's scores and ids to --out as
<case>/scores and <case>/ids. ``CASES`` is also read by tests/search/test_sharded.py.
"""

from __future__ import annotations

import argparse
import os

# name -> (kind, filter, k, extra keywords). kind: float | bf16 | int8 | int8_asym | hamming | pq |
# maxsim;
# filter: none | allowed (a per-row mask) | equals (per-query category). With test_sharded.py's
# 557 rows over 8 shards (one or two processes), each shard holds 70 rows, the last 3 padding;
# k = 80 exceeds a shard's rows, and the 'equals' categories leave fewer than 80 rows for most
# queries.
CASES = {
    'float_none': ('float', 'none', 80, {}),
    'float_allowed': ('float', 'allowed', 12, {'block_size': 32}),
    'float_equals': ('float', 'equals', 80, {'query_block': 4}),
    'float_maxima': ('float', 'none', 10, {'strategy': 'maxima', 'block_size': 32}),
    'bf16_none': ('bf16', 'none', 80, {}),
    'bf16_allowed': ('bf16', 'allowed', 12, {}),
    'int8_none': ('int8', 'none', 80, {}),
    'int8_allowed': ('int8', 'allowed', 12, {}),
    'int8_equals': ('int8', 'equals', 80, {}),
    'int8_asym_none': ('int8_asym', 'none', 80, {}),
    'int8_asym_allowed': ('int8_asym', 'allowed', 12, {}),
    'int8_asym_equals': ('int8_asym', 'equals', 80, {}),
    'hamming_none': ('hamming', 'none', 80, {}),
    'hamming_allowed': ('hamming', 'allowed', 12, {'block_size': 32}),
    'hamming_equals': ('hamming', 'equals', 80, {}),
    'hamming_maxima': ('hamming', 'allowed', 10, {'strategy': 'maxima', 'block_size': 32}),
    'pq_none': ('pq', 'none', 80, {}),
    'pq_allowed': ('pq', 'allowed', 12, {}),
    'pq_equals': ('pq', 'equals', 80, {}),
    # multi-vector documents (MaxSim): 4 token vectors per row, some masked
    'maxsim_none': ('maxsim', 'none', 80, {}),
    'maxsim_allowed': ('maxsim', 'allowed', 12, {'block_size': 16}),
}


def run_cases(mesh, data: dict, names) -> dict:
  """Sharded results of the named cases: {'<case>/scores': ..., '<case>/ids': ...} (numpy)."""
  import jax.numpy as jnp
  import numpy as np

  from embedjax import quant
  from embedjax.quant.pq import PQParams
  from embedjax.quant.scalar import UniformParams
  from embedjax.search import sharded

  n = data['x'].shape[0]
  start, stop = sharded.process_rows(mesh, n)
  x = data['x'][start:stop]  # this process's rows, as a process reading only its slice would
  stored = {
      'float': x, 'bf16': x.astype(jnp.bfloat16), 'int8': data['x_int8'][start:stop],
      'int8_asym': data['x_int8'][start:stop], 'hamming': data['x_bits'][start:stop],
      'pq': data['x_pq'][start:stop],
      'maxsim': (data['mv_x'][start:stop], data['mv_mask'][start:stop])}
  placed = {}
  attrs = {'allowed': sharded.place_rows(mesh, data['mask'][start:stop], n),
           'equals': sharded.place_rows(mesh, data['category'][start:stop], n)}
  int8_params = UniformParams(ranges=jnp.asarray(data['int8_ranges']))
  pq_params = PQParams(codebooks=jnp.asarray(data['pq_codebooks']))
  out = {}
  for name in names:
    kind, filt, k, kw = CASES[name]
    if kind not in placed:
      placed[kind] = sharded.place_rows(mesh, stored[kind], n)
    corpus = placed[kind]
    if filt != 'none':
      kw = dict(kw, predicate=filt, corpus_attrs=attrs[filt],
                query_attrs=data['query_category'] if filt == 'equals' else None)
    if kind in ('float', 'bf16'):
      s, i = sharded.sharded_topk(mesh, data['q'], corpus, n, k, **kw)
    elif kind == 'int8':
      s, i = sharded.sharded_int8_topk(mesh, data['q_int8'], corpus, n, k, **kw)
    elif kind == 'int8_asym':
      s, i = sharded.sharded_asymmetric_topk(mesh, quant.get('int8'), int8_params, data['q'],
                                             corpus, n, k, **kw)
    elif kind == 'hamming':
      s, i = sharded.sharded_hamming_topk(mesh, data['q_bits'], corpus, n, k, **kw)
    elif kind == 'maxsim':
      from embedjax.search.multivector import sharded_maxsim_topk
      s, i = sharded_maxsim_topk(mesh, data['mv_q'], data['mv_qmask'], *corpus, n, k, **kw)
    else:
      s, i = sharded.sharded_asymmetric_topk(mesh, quant.get('pq4'), pq_params, data['q'],
                                             corpus, n, k, **kw)
    # Replicated outputs: every process holds the whole result.
    out[f'{name}/scores'] = np.asarray(s.addressable_data(0))
    out[f'{name}/ids'] = np.asarray(i.addressable_data(0))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--inputs', required=True)
  ap.add_argument('--out', required=True)
  ap.add_argument('--devices', type=int, default=8)
  ap.add_argument('--process-id', type=int)
  ap.add_argument('--num-processes', type=int, default=1)
  ap.add_argument('--port', type=int, default=0)
  ap.add_argument('--cases', default=','.join(CASES))
  args = ap.parse_args()
  # The device count must be set before jax starts.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={args.devices}')
  import jax
  import numpy as np
  if args.process_id is not None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{args.port}', num_processes=args.num_processes,
                               process_id=args.process_id)
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  with np.load(args.inputs) as f:
    data = dict(f)
  out = run_cases(mesh, data, args.cases.split(','))
  if jax.process_index() == 0:
    tmp = args.out + '.tmp.npz'
    np.savez(tmp, devices=jax.device_count(), processes=jax.process_count(), **out)
    os.replace(tmp, args.out)
  print('done', jax.process_index(), flush=True)
  if args.process_id is not None:
    jax.distributed.shutdown()


if __name__ == '__main__':
  main()
