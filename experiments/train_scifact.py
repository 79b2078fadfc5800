r"""Fine-tune all-MiniLM-L6-v2 on SciFact train pairs, plain and Matryoshka; evaluate on SciFact test.

python experiments/train_scifact.py [--only plain|mrl] [--runs-dir runs]

Runs configs/minilm_scifact.py and configs/minilm_scifact_mrl.py (each resumable: rerunning the
command continues from the last checkpoint) and writes
  results/train/minilm_scifact.json      {"before": {"scifact_ndcg@10": ...}, "after": {...}}
  results/train/minilm_scifact_mrl.json  nDCG@10 at every dim for the MRL run and the plain run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedjax.config import load_config  # noqa: E402
from embedjax.io import atomic_write_json  # noqa: E402
from embedjax.provenance import provenance  # noqa: E402
from embedjax.train.loop import train  # noqa: E402

DIMS = (384, 256, 128, 64, 32)


def _metric(evals: dict, name: str, dim: int) -> float:
  return evals[f'scifact_{name}@{dim}']


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', choices=('plain', 'mrl'), default=None)
  parser.add_argument('--runs-dir', default=str(REPO / 'runs'))
  args = parser.parse_args(argv)
  out_dir = REPO / 'results' / 'train'
  summaries = {}
  for name, config in (('plain', 'minilm_scifact.py'), ('mrl', 'minilm_scifact_mrl.py')):
    if args.only and args.only != name:
      continue
    cfg = load_config(str(REPO / 'configs' / config))
    print(f'== {name}: {config}', flush=True)
    summaries[name] = train(cfg, Path(args.runs_dir) / Path(config).stem)
  prov = provenance()

  def run_record(s):
    return {'seconds': s['seconds'], 'pairs_per_s': s['pairs_per_s'], 'steps': s['steps'],
            'train_rows': s['train_rows'], 'config': s['config']}

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
  sys.exit(main())
