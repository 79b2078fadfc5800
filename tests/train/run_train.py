"""Runs a training config in its own process (device count / distributed set before jax starts).

python tests/train/run_train.py --config configs/tiny_synthetic.py --workdir W --out params.npz
    [--devices=8] [--process-id I --num-processes N --port P] [--stop-after K] [--no-resume]
    [--config.field=value ...]
Writes the final params (flattened, '/'-joined keys) to --out from process 0.
"""

from __future__ import annotations

import os
import sys


def _flags(fv) -> None:
  from absl import flags
  flags.DEFINE_string('workdir', None, 'workdir', flag_values=fv)
  flags.DEFINE_string('out', None, 'params .npz', flag_values=fv)
  flags.DEFINE_integer('devices', 1, 'forced CPU devices', flag_values=fv)
  flags.DEFINE_integer('process-id', None, 'this process (distributed runs)', flag_values=fv)
  flags.DEFINE_integer('num-processes', 1, 'processes', flag_values=fv)
  flags.DEFINE_integer('port', 0, 'coordinator port', flag_values=fv)
  flags.DEFINE_integer('stop-after', None, 'steps to run in this call', flag_values=fv)
  flags.DEFINE_boolean('no-resume', False, 'ignore checkpoints', flag_values=fv)


def main():
  # The device count must be set before jax starts: read it from argv before anything imports jax.
  argv = sys.argv[1:]
  devices = next((a.split('=', 1)[1] if '=' in a else argv[i + 1]
                  for i, a in enumerate(argv) if a.split('=', 1)[0] == '--devices'), '1')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={devices}')
  from embedjax.config import parse_args
  cfg, fv = parse_args(sys.argv[1:], define_flags=_flags)
  args = {name: fv[name].value for name in fv}
  import jax
  if args['process-id'] is not None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{args["port"]}', num_processes=args['num-processes'],
                               process_id=args['process-id'])
  import numpy as np
  from embedjax.train.loop import train
  from embedjax.train.optim import param_paths

  summary = train(cfg, args['workdir'], resume=not args['no-resume'],
                  stop_after=args['stop-after'], progress=False)
  params = summary['state'].params
  if jax.process_index() == 0:
    names = jax.tree_util.tree_leaves(param_paths(params))
    values = [np.asarray(jax.device_get(x)) for x in jax.tree_util.tree_leaves(params)]
    tmp = args['out'] + '.tmp.npz'
    np.savez(tmp, **dict(zip(names, values)))
    os.replace(tmp, args['out'])
  print('done', summary['steps_done'], flush=True)
  if args['process-id'] is not None:
    jax.distributed.shutdown()


if __name__ == '__main__':
  sys.exit(main())
