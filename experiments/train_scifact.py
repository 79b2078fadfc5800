r"""Fine-tune all-MiniLM-L6-v2 on SciFact train pairs, plain and Matryoshka; evaluate on SciFact test.

python -m experiments.train_scifact [--only plain|mrl] [--runs-dir runs] [--config.x=y ...]

Runs configs/minilm_scifact.py and configs/minilm_scifact_mrl.py (each resumable: rerunning the
command continues from the last checkpoint; ``--config.x=y`` overrides apply to both) and writes
  results/train/minilm_scifact.json      {"before": {"scifact_ndcg@10": ...}, "after": {...}}
  results/train/minilm_scifact_mrl.json  nDCG@10 at every dim for the MRL run and the plain run
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from embedjax import paths
from embedjax.config import config_overrides, load_config, run_main
from embedjax.io import atomic_write_json
from embedjax.provenance import Run
from embedjax.train.loop import dry_build, train

DIMS = (384, 256, 128, 64, 32)


def _metric(evals: dict, name: str, dim: int) -> float:
  return evals[f'scifact_{name}@{dim}']


CONFIGS = {'plain': 'configs/minilm_scifact.py', 'mrl': 'configs/minilm_scifact_mrl.py'}


def _flags(fv) -> None:
  flags.DEFINE_enum('only', None, list(CONFIGS), 'run one of the two', flag_values=fv)
  flags.DEFINE_string('runs-dir', str(paths.repo_root() / 'runs'), 'workdirs go here',
                      flag_values=fv)


def configs(argv) -> dict:
  """Both runs' configs, with the command line's overrides applied to each."""
  repo = paths.repo_root()
  return {name: load_config(str(repo / path), config_overrides(argv))
          for name, path in CONFIGS.items()}


def main(cfg, fv) -> int:
  del cfg  # the plain run's config: both are loaded below, with the same overrides
  out_dir = paths.repo_root() / 'results' / 'train'
  summaries = {}
  # each run's config (stored in its record), seed and data, added below
  run = Run(config={}, seeds={}, store_config=False).start()
  for name, cfg in configs(sys.argv[1:]).items():
    if fv['only'].value and fv['only'].value != name:
      continue
    run.config[name], run.seeds[name] = cfg, cfg.seed
    dry_build(cfg)
    print(f'== {name}: {CONFIGS[name]}', flush=True)
    summaries[name] = train(cfg, Path(fv['runs-dir'].value) / Path(CONFIGS[name]).stem)
    run.add_inputs(hashed=summaries[name]['inputs'])
  prov = run.finish().provenance()

  def run_record(s):
    return {'seconds': s['seconds'], 'pairs_per_s': s['pairs_per_s'], 'steps': s['steps'],
            'train_rows': s['train_rows'], 'config': s['config'], 'config_hash': s['config_hash'],
            'inputs': s['inputs'], 'started_at': s['started_at'], 'finished_at': s['finished_at']}

  if 'plain' in summaries:
    s = summaries['plain']
    record = {
        'before': {'scifact_ndcg@10': _metric(s['before'], 'ndcg@10', 384),
                   'scifact_recall@100': _metric(s['before'], 'recall@100', 384)},
        'after': {'scifact_ndcg@10': _metric(s['after'], 'ndcg@10', 384),
                  'scifact_recall@100': _metric(s['after'], 'recall@100', 384)},
        'split': 'SciFact test (300 queries, 5,183 docs); trained on SciFact train qrels',
        'run': run_record(s), **prov}
    atomic_write_json(out_dir / 'minilm_scifact.json', record)
    print(f"plain: nDCG@10 {record['before']['scifact_ndcg@10']:.4f} -> "
          f"{record['after']['scifact_ndcg@10']:.4f}")
  if 'mrl' in summaries and 'plain' in summaries:
    plain, mrl = summaries['plain'], summaries['mrl']
    table = {str(d): {'pretrained': _metric(plain['before'], 'ndcg@10', d),
                      'plain': _metric(plain['after'], 'ndcg@10', d),
                      'mrl': _metric(mrl['after'], 'ndcg@10', d)} for d in DIMS}
    full = table['384']
    for d, row in table.items():
      row['plain_retention'] = row['plain'] / full['plain']
      row['mrl_retention'] = row['mrl'] / full['mrl']
    record = {'ndcg@10': table, 'metric': 'SciFact test nDCG@10 at truncated + renormalised dims',
              'runs': {'plain': run_record(plain), 'mrl': run_record(mrl)}, **prov}
    atomic_write_json(out_dir / 'minilm_scifact_mrl.json', record)
    for d, row in table.items():
      print(f"dim {d:>3}: pretrained {row['pretrained']:.4f}  plain {row['plain']:.4f}  "
            f"mrl {row['mrl']:.4f}")
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main, CONFIGS['plain'], define_flags=_flags))
