"""The MTEB bridge: embedjax models run by mteb's own evaluators, offline, on local data.

Three routes must give the same scores: (a) mteb running ``MTEBEncoder`` over embedjax's packed
encoder, (b) embedjax's own evaluators (``embedjax.evals.tasks``) on the same embeddings, (c) mteb
running sentence-transformers on the same packaged weights. (a) = (b) checks that embedjax's
protocol (text joining, similarity, ranking, metrics) is mteb's; (a) = (c) adds the encoder itself.
Each text set is embedded once per model: embedjax's embeddings are memoised and shared by (a)
and (b).

Data: every third pair of STS-B test (460 pairs, all genres) and a SciFact test subset (the 50
lowest query ids, their judged documents and the 50 lowest other ids). The sizes keep the module
near a minute of CPU: on two shared cores each model spends about 0.1 CPU-s per SciFact abstract
and 5 ms per STS sentence. The full sets (all 1,379 pairs; 1,000 other documents) agree too but take
about ten minutes here; experiments/mteb_scifact.py compares the full SciFact test set.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from embedjax.evals import mteb_encoder
from embedjax.evals.mteb_encoder import MTEBEncoder, prompt_name
from embedjax.paths import repo_root

NUM_QUERIES, NUM_OTHER_DOCS, STS_EVERY = 50, 50, 3
TOL = 1e-4


@contextlib.contextmanager
def _one_torch_thread():
  # On two shared cores torch's second thread mostly spins: one thread does the same work in a
  # third of the CPU time.
  import torch
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(before)


def _files(folder: Path) -> dict[str, float]:
  if not folder.is_dir():
    return {}
  return {str(p): p.stat().st_mtime for p in folder.rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def mteb_env(tmp_path_factory):
  """Offline switches and mteb's cache under tmp, set before mteb is first imported."""
  tmp = tmp_path_factory.mktemp('mteb')
  mp = pytest.MonkeyPatch()
  for key, value in {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1',
                     'TRANSFORMERS_OFFLINE': '1', 'MTEB_CACHE': str(tmp / 'default_cache'),
                     'HF_DATASETS_CACHE': str(tmp / 'hf_datasets')}.items():
    mp.setenv(key, value)
  # mteb's default result cache and the datasets cache: nothing may appear there or in the
  # working folder (older mteb wrote a results/ folder there).
  watched = [Path.cwd(), repo_root(), Path.home() / '.cache' / 'mteb',
             Path.home() / '.cache' / 'huggingface' / 'datasets']
  before = {str(w): (sorted(os.listdir(w)) if w.is_dir() else None) for w in watched}
  before_files = {str(w): _files(w) for w in watched[2:]}
  mteb = pytest.importorskip('mteb')
  mp.syspath_prepend(str(repo_root()))  # experiments/ is imported as a package of the repository
  local = importlib.import_module('experiments.mteb_local')
  yield {'tmp': tmp, 'mteb': mteb, 'local': local, 'watched': watched, 'before': before,
         'before_files': before_files}
  mp.undo()


@pytest.fixture(scope='module')
def tasks(mteb_env, data_dir):
  local = mteb_env['local']
  if not (data_dir / 'stsb').is_dir() or not (data_dir / 'scifact').is_dir():
    pytest.skip('stsb or scifact missing from the shared data folder')
  return [local.LocalSTSBenchmark(data_dir, every=STS_EVERY),
          local.LocalSciFact(data_dir, num_queries=NUM_QUERIES, num_other_docs=NUM_OTHER_DOCS)]


@pytest.fixture(scope='module')
def memo(mteb_env, minilm):
  return mteb_env['local'].MemoEncoder(minilm)


@pytest.fixture(scope='module')
def embedjax_run(mteb_env, tasks, memo):
  """(a) and (b): mteb's scores and embedjax's, from the same memoised embeddings."""
  local = mteb_env['local']
  enc = MTEBEncoder(memo, name='embedjax/all-MiniLM-L6-v2')
  enc.mteb_model_meta = local.model_meta(enc.meta_fields())
  results = mteb_env['tmp'] / 'results'
  first_call = len(memo.calls)
  via_mteb = local.run_mteb(enc, tasks, cache_dir=results)
  calls_after_mteb = len(memo.calls)
  own = {t.metadata.name: local.embedjax_scores(t, memo.encode) for t in tasks}
  return {'mteb': via_mteb, 'own': own, 'encoder': enc, 'results': results,
          'mteb_calls': memo.calls[first_call:calls_after_mteb],
          'new_texts_for_own': sum(n for _, _, n in memo.calls[calls_after_mteb:])}


@pytest.fixture(scope='module')
def st_run(mteb_env, tasks, st_minilm):
  """(c): mteb running sentence-transformers on the same weights."""
  with _one_torch_thread():
    return mteb_env['local'].run_mteb(st_minilm, tasks)


def test_local_tasks_hold_the_data_of_mtebs_hub_tasks(mteb_env, data_dir, tasks):
  """The local files against the statistics mteb ships for its hub datasets
  (``TaskMetadata.descriptive_stats``): STS-B test is the same data; SciFact's queries and qrels
  are the same, its corpus (rebuilt from the original abstracts, see scifact/SOURCE.md) has the
  same documents with 0.19% more characters in all."""
  local = mteb_env['local']  # (``tasks`` only skips this test when the data is absent)
  sts, scifact = local.LocalSTSBenchmark(data_dir), local.LocalSciFact(data_dir)
  for task in (sts, scifact):
    task.load_data()
  want = sts.metadata.descriptive_stats['test']
  got = sts._calculate_descriptive_statistics_from_split('test', hf_subset='default')
  differing = {k for k in want if got[k] != want[k]}
  # The shipped file counts ordered pairs as unique; mteb now counts {a, b} = {b, a} once.
  assert differing == {'unique_pairs'}
  pairs = sts.pairs()
  assert len(set(zip(pairs.sentences1, pairs.sentences2))) == want['unique_pairs']
  want = scifact.metadata.descriptive_stats['test']
  got = scifact._calculate_descriptive_statistics_from_split('test', hf_subset='default')
  for key in ('num_documents', 'num_queries', 'queries_text_statistics'):
    assert got[key] == want[key], key
  assert {k: got['relevant_docs_statistics'][k] for k in want['relevant_docs_statistics']} == \
      want['relevant_docs_statistics']
  docs, want_docs = got['documents_text_statistics'], want['documents_text_statistics']
  for key in ('min_text_length', 'max_text_length', 'unique_texts'):
    assert docs[key] == want_docs[key], key
  assert abs(docs['total_text_length'] / want_docs['total_text_length'] - 1) < 0.002


def test_mteb_on_embedjax_equals_embedjax_evaluators(embedjax_run, tasks):
  via_mteb, own = embedjax_run['mteb'], embedjax_run['own']
  assert set(via_mteb) == {'STSBenchmark', 'SciFact'}
  sts, ret = via_mteb['STSBenchmark'], via_mteb['SciFact']
  assert sts.main_score == 'cosine_spearman' and ret.main_score == 'ndcg_at_10'
  # embedjax's evaluator embedded nothing new: mteb saw exactly the texts embedjax reads
  # (documents joined as title + ' ' + text on both sides).
  assert embedjax_run['new_texts_for_own'] == 0
  pairs = [(sts, own['STSBenchmark'], {'cosine_spearman': 'spearman',
                                       'cosine_pearson': 'pearson',
                                       'euclidean_spearman': 'euclidean_spearman',
                                       'manhattan_pearson': 'manhattan_pearson'}),
           (ret, own['SciFact'], {f'{m}_at_{k}': f'{m}@{k}'
                                  for m in ('ndcg', 'recall', 'mrr', 'map', 'precision')
                                  for k in (1, 10, 100)})]
  for scores, mine, names in pairs:
    for theirs_name, mine_name in names.items():
      assert abs(scores.scores[theirs_name] - mine[mine_name]) <= TOL, (theirs_name, scores.scores[
          theirs_name], mine[mine_name])
  # The subset is what it says: 50 queries, their judged documents and 1,000 others.
  data = tasks[1].retrieval_data()
  judged = {d for docs in data.qrels.values() for d in docs}
  assert len(data.query_ids) == NUM_QUERIES and len(data.corpus_ids) == len(judged) + NUM_OTHER_DOCS


def test_mteb_on_embedjax_equals_mteb_on_sentence_transformers(embedjax_run, st_run):
  for name, theirs in st_run.items():
    ours = embedjax_run['mteb'][name]
    assert theirs.main_score == ours.main_score
    assert abs(theirs.value - ours.value) <= TOL, (name, theirs.value, ours.value)
  # A sanity floor, far below MiniLM's published STS-B (~0.82) and SciFact (~0.65) scores.
  assert st_run['STSBenchmark'].value > 0.75 and st_run['SciFact'].value > 0.5


def test_each_text_set_is_one_encoder_call(embedjax_run, tasks):
  # mteb encodes sentence1 and sentence2 of STS-B, then the queries and the corpus of SciFact;
  # the bridge collects each DataLoader's batches (mteb's batch_size 64) into one encoder call.
  num_pairs = len(tasks[0].pairs())
  num_docs = len(tasks[1].retrieval_data().corpus_ids)
  assert [(p, n) for p, n, _ in embedjax_run['mteb_calls']] == [
      (None, num_pairs), (None, num_pairs), (None, NUM_QUERIES), (None, num_docs)]


def test_nothing_written_outside_tmp(embedjax_run, st_run, mteb_env):
  written = list(embedjax_run['results'].rglob('*.json'))
  assert any(p.name == 'SciFact.json' for p in written), written  # mteb's results went to tmp
  for w in mteb_env['watched']:
    after = sorted(os.listdir(w)) if w.is_dir() else None
    assert after == mteb_env['before'][str(w)], w
  for w in mteb_env['watched'][2:]:
    assert _files(w) == mteb_env['before_files'][str(w)], w


def test_prompt_choice_matches_mteb(mteb_env, tasks):
  from mteb.models.abs_encoder import get_prompt_name
  from mteb.types import PromptType
  for task in tasks:
    meta = task.metadata
    keys = [f'{meta.name}-query', meta.name, f'{meta.type}-query', f'{meta.type}-document',
            meta.type, 'query', 'document', 'Clustering']
    for r in range(len(keys) + 1):
      for chosen in itertools.combinations(keys, r):
        prompts = {k: f'<{k}> ' for k in chosen}
        for kind in (None, PromptType.query, PromptType.document):
          expected = get_prompt_name(prompts, meta, kind)
          assert prompt_name(prompts, meta.name, meta.type, kind and kind.value) == expected


def test_prompts_reach_the_model_as_for_sentence_transformers(mteb_env, data_dir, memo,
                                                              st_minilm):
  """Tiny tasks with prompts: the bridge prepends what mteb's sentence-transformers wrapper
  prepends (same scores as ST with the same prompts), each prompt where mteb's rules put it."""
  local, mteb = mteb_env['local'], mteb_env['mteb']
  tiny = [local.LocalSTSBenchmark(data_dir, num_pairs=8),
          local.LocalSciFact(data_dir, num_queries=4, num_other_docs=6)]
  prompts = {'SciFact-query': 'claim: ', 'document': 'passage: ', 'STS': 'pair: '}
  enc = MTEBEncoder(memo, prompts=prompts)
  ours = local.run_mteb(enc, tiny)
  assert enc.prompts_used == {('STSBenchmark', None): 'STS', ('SciFact', 'query'): 'SciFact-query',
                              ('SciFact', 'document'): 'document'}
  n_calls = len(memo.calls)
  with _one_torch_thread():
    theirs = local.run_mteb(
        mteb.SentenceTransformerEncoderWrapper(st_minilm, model_prompts=prompts), tiny)
  assert len(memo.calls) == n_calls
  for name in ours:
    assert abs(ours[name].value - theirs[name].value) <= TOL, name
    for k in ('cosine_pearson', 'ndcg_at_10', 'mrr_at_10'):
      if k in ours[name].scores:
        assert abs(ours[name].scores[k] - theirs[name].scores[k]) <= TOL, (name, k)


@pytest.mark.parametrize('kind', ['Pretrained', 'EmbeddingModel'])
def test_model_kinds_encode_dataloaders_like_sentence_transformers(kind, mteb_env, tasks, minilm,
                                                                   st_minilm):
  """Both kinds of model the bridge takes, through mteb's own DataLoader, with a query prompt."""
  from datasets import Dataset
  from mteb._create_dataloaders import create_dataloader
  from mteb.types import PromptType
  if kind == 'Pretrained':
    model = minilm
  else:
    model_module = pytest.importorskip('embedjax.models.model')
    model = model_module.EmbeddingModel(minilm, name='all-MiniLM-L6-v2')
  texts = ['A man is playing a guitar.', 'Short.', '', 'Three words here ' * 20]
  meta = tasks[1].metadata
  loader = create_dataloader(Dataset.from_dict({'id': [str(i) for i in range(4)], 'text': texts}),
                             task_metadata=meta, prompt_type=PromptType.query, batch_size=3)
  enc = MTEBEncoder(model, prompts={'query': 'query: '})
  assert enc.name == 'embedjax/all-MiniLM-L6-v2' and enc.dim == 384
  got = enc.encode(loader, task_metadata=meta, hf_split='test', hf_subset='default',
                   prompt_type=PromptType.query, batch_size=3)
  assert got.shape == (4, 384) and got.dtype == np.float32
  want = st_minilm.encode(texts, prompt='query: ', convert_to_numpy=True)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert isinstance(enc, mteb_env['mteb'].EncoderProtocol)
  empty = enc.encode([], task_metadata=meta, hf_split='test', hf_subset='default')
  assert empty.shape == (0, 384)


@pytest.mark.parametrize('fn', mteb_encoder.SIMILARITY_FUNCTIONS)
def test_similarity_matches_sentence_transformers(fn):
  st = pytest.importorskip('sentence_transformers')
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 7)).astype(np.float32)
  b = rng.normal(size=(6, 7)).astype(np.float32)
  sim = st.SimilarityFunction(fn)
  want = st.SimilarityFunction.to_similarity_fn(sim)(a, b).numpy()
  np.testing.assert_allclose(mteb_encoder.similarity_matrix(a, b, fn), want, rtol=1e-5, atol=1e-5)
  from embedjax.models import similarity
  assert set(mteb_encoder.SIMILARITY_FUNCTIONS) == set(similarity.names())
  want_pairs = st.SimilarityFunction.to_similarity_pairwise_fn(sim)(a, b[:5]).numpy()
  np.testing.assert_allclose(mteb_encoder.similarity_pairs(a, b[:5], fn), want_pairs, rtol=1e-5,
                             atol=1e-5)


def test_bad_input_is_one_clear_error(minilm):
  with pytest.raises(ValueError, match='unknown similarity function'):
    MTEBEncoder(minilm, similarity_fn='cos')
  with pytest.raises(TypeError, match='encode'):
    MTEBEncoder(object())
  with pytest.raises(ValueError, match='rows_per_batch'):
    MTEBEncoder(minilm, rows_per_batch=0)

  class Meta:
    name, type = 'SciFact', 'Retrieval'
  enc = MTEBEncoder(minilm)
  with pytest.raises(ValueError, match='precision'):
    enc.encode([{'text': ['x']}], task_metadata=Meta, hf_split='test', hf_subset='default',
               precision='int8')
  with pytest.raises(ValueError, match="fields \\['image'\\]"):
    enc.encode([{'image': [0]}], task_metadata=Meta, hf_split='test', hf_subset='default')


def test_bridge_does_not_import_reference_libraries():
  tree = ast.parse(Path(mteb_encoder.__file__).read_text())
  imported = {alias.name.split('.')[0] for node in ast.walk(tree)
              if isinstance(node, ast.Import) for alias in node.names}
  imported |= {node.module.split('.')[0] for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module}
  assert not imported & {'mteb', 'torch', 'sentence_transformers', 'datasets', 'transformers'}
