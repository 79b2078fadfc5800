"""Storage vs quality of all-MiniLM-L6-v2 embeddings: every quantization / reduction scheme on
SciFact (retrieval, nDCG@10) and STS-B (Spearman of cosine similarity).

Run (see configs/storage_tradeoff.py):
  python -m experiments.storage_tradeoff --config configs/storage_tradeoff.py
  python -m experiments.storage_tradeoff --config configs/storage_tradeoff.py:quick

Protocol:
  * float32 embeddings come from ``embedjax.encoding.encode`` and are cached (runs/cache), so only
    the first run pays for the encoder.
  * SciFact: every scheme is fitted on the corpus embeddings (the vectors to be stored: ranges,
    PCA, codebooks, binarizer weights), the corpus is encoded, and the 300 test queries are
    scored as float32 against the codes (asymmetric), except where the scheme name says otherwise
    (binary schemes: Hamming distance with the query binarised; ``int8_sym``: integer inner
    products of int8 queries; ``rb<u>``: the binarizer's symmetric distance). Top 100 by exact
    exhaustive search; trec_eval nDCG@10.
  * STS-B: every scheme is fitted on the train split's sentence embeddings (held out), the test
    sentences are stored and read back (``decode(encode(x))``), and the Spearman correlation of
    the pairs' cosine similarities with the gold scores is reported. Both sentences of a pair are
    stored (symmetric), except for ``*_asym`` schemes: STS has no query/document roles, so there
    the first sentence of each pair plays the query and stays float32, and the second is stored,
    cos(x1, decode(encode(x2))) - for binary, the float-vs-bits score of retrieval's asymmetric
    mode. (Runs before this rule computed ``*_asym`` like the symmetric scheme; reports mark those
    values, see ``stale_sts``.) Rescoring has no STS analogue and is skipped there.
  * Reports label plain ``int8`` as asymmetric (float32 query vs int8 codes) beside ``int8_sym``
    (``SCHEME_LABELS``). ``render(json_path)`` rewrites a run's .md from its JSON without
    re-running.
  * retention = metric / metric of float32; compression = 1536 bytes / bytes_per_vector, where
    bytes_per_vector counts only what is stored per vector (shared params - ranges, PCA matrix,
    codebooks, binarizer weights - are not); ``binary_rescore_int8`` keeps int8 codes beside the
    bits, reported as bytes_per_vector (bits, scanned) plus bytes_on_disk (int8, read for 40
    candidates per query).
"""

from __future__ import annotations

import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np

from embedjax import paths, plots, quant
from embedjax.config import run_main
from embedjax.data.readers import read_beir, read_stsb
from embedjax.embedding_cache import cached_encode
from embedjax.evals.metrics import retrieval_metrics
from embedjax.evals.sts import sts_scores
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run, rerender
from embedjax.search.hamming import hamming_topk
from embedjax.search.quantized import asymmetric_topk, int8_topk
from embedjax.search.rescore import binary_rescore

FLOAT32_BYTES = 384 * 4


# ----------------------------------------------------------------------------------------------
# Data


def load_embeddings(cfg) -> dict:
  """float32 embeddings (cached) and the evaluation data of both tasks."""
  from embedjax.models.pretrained import load_pretrained
  data_dir = paths.shared_data_dir()
  if data_dir is None:
    raise SystemExit('storage_tradeoff needs the shared data folder (../shared/data or '
                     'EMBEDJAX_DATA_DIR)')
  cache = cfg.cache_dir or None
  model = load_pretrained(cfg.model)
  sf = read_beir(data_dir / 'scifact', cfg.scifact.split)
  test = read_stsb(data_dir / 'stsb', cfg.stsb.split)
  train = read_stsb(data_dir / 'stsb', cfg.stsb.calibration)
  test_sentences = sorted(set(test.sentences1) | set(test.sentences2))
  train_sentences = sorted(set(train.sentences1) | set(train.sentences2))
  enc = lambda texts, label: cached_encode(model, texts, label, cache_dir=cache)
  out = {
      'scifact': sf,
      'scifact_queries': enc(sf.query_texts, f'scifact-{cfg.scifact.split}-queries'),
      'scifact_corpus': enc(sf.corpus_texts, 'scifact-corpus'),
      'stsb': test,
      'stsb_test': enc(test_sentences, f'stsb-{cfg.stsb.split}-sentences'),
      'stsb_train': enc(train_sentences, f'stsb-{cfg.stsb.calibration}-sentences'),
  }
  row = {s: i for i, s in enumerate(test_sentences)}
  out['stsb_pairs'] = (np.array([row[s] for s in test.sentences1]),
                       np.array([row[s] for s in test.sentences2]))
  return out


# ----------------------------------------------------------------------------------------------
# Schemes


def parse_scheme(name: str) -> tuple[str, str]:
  """Scheme name -> (quantizer name for ``quant.get``, search mode).

  Modes: 'asym' (float query vs codes), 'hamming' (binary schemes, query binarised),
  'rescore' / 'rescore_int8' (Hamming first stage, then rescoring), 'int8_sym'.
  """
  if name == 'int8_sym':
    return 'int8', 'int8_sym'
  for suffix, mode in (('_rescore_int8', 'rescore_int8'), ('_rescore', 'rescore'),
                       ('_asym', 'asym')):
    if name.endswith(suffix) and not name.startswith('rb'):  # 'rb<u>_asym' is a quantizer name
      return name[:-len(suffix)], mode
  if name.endswith(('binary', 'binary_centered')):
    return name, 'hamming'
  return name, 'asym'


def build(name: str, cfg) -> quant.Quantizer:
  if name.startswith(('pq', 'opq')):
    return quant.get(name, iters=cfg.pq.iters, opq_iters=cfg.pq.opq_iters)
  if name.startswith('rb'):
    if name.endswith('_untrained'):  # the binarizer at its initialisation: residual sign bits
      return quant.get(name[:-len('_untrained')], **{**cfg.rb, 'steps': 0})
    return quant.get(name, **cfg.rb)
  return quant.get(name)


def family(scheme: str) -> str:
  for prefix, fam in (('trunc', 'truncation'), ('pca', 'PCA'), ('grp', 'random proj.'),
                      ('srp', 'random proj.'), ('opq', 'PQ'), ('pq', 'PQ'),
                      ('rb', 'trained binary'), ('binary', 'binary'), ('ubinary', 'binary'),
                      ('int', 'integer'), ('uint', 'integer')):
    if scheme.startswith(prefix):
      return fam
  return 'float'


# ----------------------------------------------------------------------------------------------
# Evaluation


def retrieval_run(scheme: str, q, params, emb: dict, cfg) -> tuple[np.ndarray, dict]:
  """Top-k corpus indices (Q, K) for the SciFact test queries under a scheme."""
  base, mode = parse_scheme(scheme)
  corpus, queries = emb['scifact_corpus'], emb['scifact_queries']
  k = cfg.scifact.k
  codes = q.encode(params, corpus)
  extra = {}
  if mode == 'asym':
    _, idx = asymmetric_topk(q, params, queries, codes, k)
  elif mode == 'hamming':
    _, idx = hamming_topk(q.encode(params, queries), codes, k)
  elif mode == 'int8_sym':
    _, idx = int8_topk(q.encode(params, queries), codes, k)
  else:
    rescorer = None
    if mode == 'rescore_int8':
      q8 = quant.get('int8')
      p8 = q8.fit(corpus)
      rescorer = (q8, p8, q8.encode(p8, corpus))
      extra['bytes_on_disk'] = q8.bytes_per_vector(p8)
    _, idx = binary_rescore(queries, q.encode(params, queries), codes, 10,
                            cfg.rescore_multiplier, rescorer=rescorer)
  return np.asarray(idx), extra


# Written into the results, so that a report can tell a run with asymmetric STS-B scoring from one
# made before it (those computed ``*_asym`` exactly like the symmetric scheme: a duplicate).
STSB_PROTOCOL = {'symmetric': 'cos(decode(encode(x1)), decode(encode(x2)))',
                 'asym': 'cos(x1, decode(encode(x2))): first sentence float32, second stored'}


def sts_asymmetric(scheme: str) -> bool:
  """Whether STS-B scores ``scheme`` asymmetrically: its name ends in the ``_asym`` search mode."""
  base, mode = parse_scheme(scheme)
  return mode == 'asym' and base != scheme  # plain names (int8, pq48, rb2_asym) are quantizers


def sts_eval(scheme: str, q, params, emb: dict) -> float:
  """Spearman of the STS-B test pairs' cosine similarities with the gold scores under ``scheme``.

  Symmetric (every scheme but ``*_asym``): both sentences of a pair are stored and read back,
  cos(decode(encode(x1)), decode(encode(x2))); for binary that ranks like Hamming distance.
  Asymmetric (``*_asym``): the first sentence stays float32 and plays the query, the second is
  stored, cos(x1, decode(encode(x2))), as retrieval scores a float query against stored codes.
  """
  x = np.asarray(emb['stsb_test'], np.float64)
  stored = np.asarray(q.decode(params, q.encode(params, emb['stsb_test'])), np.float64)
  a, b = emb['stsb_pairs']
  if sts_asymmetric(scheme):
    if stored.shape != x.shape:
      raise ValueError(f'{scheme}: asymmetric STS needs codes decoded to the input width '
                       f'{x.shape[1]}, got {stored.shape[1]}')
    return sts_scores(x[a], stored[b], emb['stsb'].scores)['spearman']
  return sts_scores(stored[a], stored[b], emb['stsb'].scores)['spearman']


def run(cfg, emb: dict, log=print) -> dict:
  sf = emb['scifact']
  key = jax.random.key(cfg.seed)
  out = {'scifact': {}, 'stsb': {}, 'fit_seconds': {}, 'stsb_protocol': STSB_PROTOCOL}
  for i, scheme in enumerate(cfg.schemes):
    base, mode = parse_scheme(scheme)
    q = build(base, cfg)
    # One key per reducer (or scheme), so that e.g. grp50_float32 and grp50_float8 share their
    # random projection and differ only in precision.
    reducer_name = base.split('_')[0] if '_' in base else base
    k_sf, k_sts = jax.random.split(jax.random.fold_in(key, zlib.crc32(reducer_name.encode())))
    start = time.perf_counter()
    params = q.fit(emb['scifact_corpus'], key=k_sf)
    nbytes = q.bytes_per_vector(params)
    idx, extra = retrieval_run(scheme, q, params, emb, cfg)
    m = retrieval_metrics(idx, sf.qrels, sf.query_ids, sf.corpus_ids, ks=(10,))
    out['scifact'][scheme] = {'ndcg@10': m['ndcg@10'], 'recall@10': m['recall@10'],
                              'bytes_per_vector': nbytes,
                              'compression': FLOAT32_BYTES / nbytes, **extra}
    line = f'[{i + 1}/{len(cfg.schemes)}] {scheme:<22} {nbytes:5d} B  scifact {m["ndcg@10"]:.4f}'
    if mode in ('asym', 'hamming'):  # rescoring / integer-query variants are retrieval-only
      sp = q.fit(emb['stsb_train'], key=k_sts)
      rho = sts_eval(scheme, q, sp, emb)
      out['stsb'][scheme] = {'spearman': rho, 'bytes_per_vector': q.bytes_per_vector(sp),
                             'compression': FLOAT32_BYTES / q.bytes_per_vector(sp)}
      line += f'  stsb {rho:.4f}'
    out['fit_seconds'][scheme] = round(time.perf_counter() - start, 2)
    log(f'{line}  ({out["fit_seconds"][scheme]:.1f} s)')
  for task, metric in (('scifact', 'ndcg@10'), ('stsb', 'spearman')):
    ref = out[task]['float32'][metric]
    for r in out[task].values():
      r['retention'] = r[metric] / ref
  return out


# ----------------------------------------------------------------------------------------------
# Reports


def pareto(points: list[tuple[int, float, str]]) -> list[tuple[int, float, str]]:
  """The (bytes, retention, name) points no other point beats on both (fewer bytes, higher),
  in increasing bytes."""
  front = plots.pareto_front([b for b, _, _ in points], [r for _, r, _ in points])
  return [points[i] for i in front]


# Row labels of the report tables (the JSON keeps the scheme names). SciFact scores a float32 query
# against the stored codes unless the name says otherwise, so plain 'int8' is the asymmetric
# result; it is labelled so, beside the symmetric int8_sym.
SCHEME_LABELS = {
    'int8': 'int8 asymmetric (float32 query)',
    'int8_sym': 'int8_sym symmetric (int8 query)',
}

PROTOCOL_NOTE = (
    'SciFact: the float32 query is scored against the stored codes (asymmetric), except schemes '
    'ending in a binary quantizer (Hamming distance, query binarised too), `int8_sym` (integer '
    'inner product of int8 query and document codes) and `rb<u>` (the binarizer\'s symmetric '
    'distance). STS-B: both sentences of a pair are stored and read back (symmetric), except '
    '`*_asym` (first sentence float32 against the second one\'s stored code). `- | -`: not run '
    'on STS-B (rescoring and integer-query variants are retrieval-only).')


def label(scheme: str) -> str:
  return SCHEME_LABELS.get(scheme, scheme)


def stale_sts(results: dict) -> set[str]:
  """The ``*_asym`` STS-B entries of results written before asymmetric STS-B scoring existed:
  those runs computed them exactly like the symmetric scheme, so they are duplicates."""
  if 'stsb_protocol' in results:
    return set()
  return {n for n in results['stsb'] if sts_asymmetric(n)}


def markdown(results: dict) -> str:
  names = list(results['scifact'])
  stale = stale_sts(results)
  sts = {n: v for n, v in results['stsb'].items() if n not in stale}
  front = {t: {n for _, _, n in pareto([(v['bytes_per_vector'], v['retention'], k)
                                        for k, v in rows.items()])}
           for t, rows in (('scifact', results['scifact']), ('stsb', sts))}
  lines = ['| scheme | bytes/vector | compression | SciFact nDCG@10 | retention | '
           'STS-B Spearman | retention |', '|---|---:|---:|---:|---:|---:|---:|']
  for n in sorted(names, key=lambda n: (-results['scifact'][n]['bytes_per_vector'], n)):
    s = results['scifact'][n]
    t = sts.get(n)
    mark = lambda task: ' *' if n in front[task] else ''
    nbytes = f'{s["bytes_per_vector"]}' + (f' (+{s["bytes_on_disk"]} on disk)'
                                          if 'bytes_on_disk' in s else '')
    sts_cells = (f'{100 * t["spearman"]:.2f} | {100 * t["retention"]:.1f}%{mark("stsb")}'
                 if t else 'n/a † | n/a †' if n in stale else '- | -')
    ratio = s['compression']
    ratio = f'{ratio:.1f}x' if ratio < 10 else f'{ratio:.0f}x'
    lines.append(f'| {label(n)} | {nbytes} | {ratio} | {100 * s["ndcg@10"]:.2f} | '
                 f'{100 * s["retention"]:.1f}%{mark("scifact")} | {sts_cells} |')
  lines.append('')
  lines.append('`*` = on the Pareto front of its task (no scheme is both smaller and better).')
  lines += ['', PROTOCOL_NOTE]
  if stale:
    lines += ['', f'† Not reported: this run predates asymmetric STS-B scoring and computed '
              f'{", ".join(sorted(stale))} on STS-B exactly like the symmetric scheme (a '
              'duplicate value, left out here and of the Pareto front); the next run measures it.']
  prov = results.get('provenance')
  if prov:
    lines += ['', f'Run: `{prov.get("command", "?")}` at commit {prov.get("git_commit", "?")}, '
              f'{prov.get("date", "?")}.']
  return '\n'.join(lines) + '\n'


def render(json_path: str | Path, md_path: str | Path | None = None) -> Path:
  """Rewrites a run's table from its results JSON without re-running anything (for a report
  format change); writes ``<json stem>.md`` beside it unless ``md_path`` is given."""
  return rerender(json_path, md_path, markdown, 'experiments.storage_tradeoff.render')


def figure(results: dict):
  """Both tasks' storage vs retention, one panel each, with their Pareto fronts (a Figure)."""
  fams = sorted({family(n) for n in results['scifact']})
  fig, axes = plots.subplots(1, 2, figsize=(14, 5.5))
  for ax, task, title in ((axes[0], 'scifact', 'SciFact nDCG@10'),
                          (axes[1], 'stsb', 'STS-B Spearman')):
    stale = stale_sts(results) if task == 'stsb' else set()
    pts = [{'name': n, 'x': v['bytes_per_vector'], 'y': 100 * v['retention'], 'group': family(n)}
           for n, v in results[task].items() if n not in stale]
    plots.pareto_plot(pts, ax=ax, group_order=fams, log_base=2, annotate='front',
                      xlabel='bytes per vector (log2)',
                      ylabel=f'retention of float32 {title} (%)',
                      title=f'all-MiniLM-L6-v2, {title}',
                      ylim=(max(50, min(p['y'] for p in pts) - 2), 101.5))
  axes[1].get_legend().remove()  # one legend (the families) is enough
  fig.tight_layout()
  return fig


def plot(results: dict, path: Path) -> None:
  plots.save_png(figure(results), path, dpi=130)


def dry_run(cfg) -> dict:
  """Builds every scheme's quantizer and search mode from its name (no data, no fitting)."""
  from embedjax.models.pretrained import load_spec
  width = load_spec(cfg.model)[0].bert.hidden_size
  if width * 4 != FLOAT32_BYTES:
    raise ValueError(f'model {cfg.model}: {width} dims, the study counts bytes for 384')
  if cfg.scifact.calibration != 'corpus' or cfg.stsb.calibration == cfg.stsb.split:
    raise ValueError('scifact.calibration must be corpus; stsb.calibration a split other than '
                     f'stsb.split ({cfg.stsb.split!r})')
  schemes = {}
  for name in cfg.schemes:
    base, mode = parse_scheme(name)
    schemes[name] = (build(base, cfg), mode)
  return {'schemes': schemes}


def main(cfg, flags=None) -> None:
  dry_run(cfg)
  out_dir = Path(cfg.out_dir) if cfg.out_dir else paths.repo_root() / 'results'
  data_dir = paths.shared_data_dir()
  # (not named `run`: that is this module's study function)
  provenance_run = Run(config=cfg, seeds=cfg.seed, store_config=False,
                       inputs=[data_dir / 'scifact', data_dir / 'stsb'] if data_dir else [],
                       extra_packages=('ml_dtypes', 'faiss-cpu', 'sentence-transformers')).start()
  start = time.perf_counter()
  print('encoding (or reading cached) embeddings ...', flush=True)
  emb = load_embeddings(cfg)
  print(f'  scifact corpus {emb["scifact_corpus"].shape}, queries {emb["scifact_queries"].shape}; '
        f'stsb test {emb["stsb_test"].shape}, train {emb["stsb_train"].shape} '
        f'({time.perf_counter() - start:.0f} s)', flush=True)
  results = run(cfg, emb, log=lambda s: print(s, flush=True))
  results['config'] = cfg.to_dict()
  results['seconds'] = round(time.perf_counter() - start, 1)
  results['provenance'] = provenance_run.finish().provenance()
  name = cfg.name
  atomic_write_json(out_dir / f'{name}.json', results)
  atomic_write_text(out_dir / f'{name}.md', markdown(results))
  plot(results, out_dir / f'{name}.png')
  print(markdown(results))
  print(f'wrote {out_dir / name}.{{json,md,png}} in {results["seconds"]:.0f} s')


if __name__ == '__main__':
  sys.exit(run_main(main, 'configs/storage_tradeoff.py'))
