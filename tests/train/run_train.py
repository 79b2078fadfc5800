"""Runs a training config in its own process (device count / distributed set before jax starts).

python tests/train/run_train.py --config configs/tiny_synthetic.py --workdir W --out params.npz
    [--devices 8] [--process-id I --num-processes N --port P] [--stop-after K] [--no-resume]
    [--config.field=value ...]
Writes the final params (flattened, '/'-joined keys) to --out from process 0.
"""

from __future__ import annotations

import argparse
import os
import sys


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--devices', type=int, default=1)
  parser.add_argument('--process-id', type=int, default=None)
  parser.add_argument('--num-processes', type=int, default=1)
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--stop-after', type=int, default=None)
  parser.add_argument('--no-resume', action='store_true')
  args, overrides = parser.parse_known_args()
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={args.devices}')
  import jax
  if args.process_id is not None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{args.port}', num_processes=args.num_processes,
                               process_id=args.process_id)
  import numpy as np
  from embedjax.config import load_config
  from embedjax.train.loop import train
  from embedjax.train.optim import param_paths

  cfg = load_config(args.config, overrides)
  summary = train(cfg, args.workdir, resume=not args.no_resume, stop_after=args.stop_after,
                  progress=False)
  params = summary['state'].params
  if jax.process_index() == 0:
    names = jax.tree_util.tree_leaves(param_paths(params))
    values = [np.asarray(jax.device_get(x)) for x in jax.tree_util.tree_leaves(params)]
    tmp = args.out + '.tmp.npz'
    np.savez(tmp, **dict(zip(names, values)))
    os.replace(tmp, args.out)
  print('done', summary['steps_done'], flush=True)
  if args.process_id is not None:
    jax.distributed.shutdown()


if __name__ == '__main__':
  sys.exit(main())
