"""The public API: ``embedjax.load`` and its model object against sentence-transformers, the
``__all__`` exports of every package, and the name registries (``get(name)`` / ``names()``)."""

from __future__ import annotations

import dataclasses
import doctest
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import embedjax
from embedjax import evals, losses, quant, search
from embedjax.models import similarity
from embedjax.models.model import EmbeddingModel
from embedjax.registry import UnknownNameError

TEXTS = ['A man is playing a guitar.', 'Embeddings compress meaning into vectors.',
         'The weather is lovely today!', '']
PROMPTS = {'query': 'query: ', 'passage': 'passage: '}
PACKAGES = ('embedjax', 'embedjax.data', 'embedjax.evals', 'embedjax.limit', 'embedjax.losses',
            'embedjax.models', 'embedjax.quant', 'embedjax.search', 'embedjax.tables',
            'embedjax.train')
REFERENCE_LIBRARIES = ('torch', 'sentence_transformers', 'faiss', 'mteb', 'transformers')


# --- the model object against sentence-transformers ----------------------------------------------

@pytest.fixture(scope='module')
def model(minilm):
  return EmbeddingModel(minilm, name='all-MiniLM-L6-v2').replace(prompts=PROMPTS)


@pytest.fixture(scope='module')
def saved(model, tmp_path_factory):
  """The model with perturbed weights and its own prompts / similarity, saved by ``.save``."""
  changed = model.replace(params=jax.tree_util.tree_map(lambda x: x * 1.01, model.params),
                          default_prompt_name='query', similarity_fn='dot')
  return changed, changed.save(tmp_path_factory.mktemp('api') / 'saved')


@pytest.fixture(scope='module')
def st_saved(saved):
  st = pytest.importorskip('sentence_transformers')
  return st.SentenceTransformer(str(saved[1]), device='cpu')


def test_encode_matches_sentence_transformers(model, st_minilm):
  got = model.encode(TEXTS)
  assert got.shape == (len(TEXTS), model.dim) and got.dtype == np.float32
  np.testing.assert_allclose(got, st_minilm.encode(TEXTS), atol=1e-5)
  single = model.encode(TEXTS[0])
  assert single.shape == (model.dim,)
  np.testing.assert_allclose(single, got[0], atol=1e-6)
  assert model.encode([]).shape == (0, model.dim)
  with pytest.raises(TypeError, match=r'texts\[1\] is a int'):
    model.encode(['fine', 3])


def test_prompts_match_sentence_transformers(model, st_minilm):
  plain = model.encode(TEXTS)
  want = st_minilm.encode(TEXTS, prompt='query: ')
  np.testing.assert_allclose(model.encode(TEXTS, prompt='query: '), want, atol=1e-5)
  np.testing.assert_allclose(model.encode(TEXTS, prompt_name='query'), want, atol=1e-5)
  assert np.abs(want - plain).max() > 1e-2  # the prompt is visible in the embedding
  with_default = model.replace(default_prompt_name='query')
  np.testing.assert_allclose(with_default.encode(TEXTS), want, atol=1e-5)
  # As in sentence-transformers, an explicit (even empty) prompt overrides the default one.
  np.testing.assert_allclose(with_default.encode(TEXTS, prompt=''), plain, atol=1e-6)
  np.testing.assert_allclose(with_default.encode(TEXTS, prompt_name='passage'),
                             st_minilm.encode(TEXTS, prompt='passage: '), atol=1e-5)


def test_prompt_errors(model):
  with pytest.raises(ValueError, match=r"unknown prompt_name 'qury'; this model's prompts: "
                                       r"query, passage"):
    model.encode(TEXTS, prompt_name='qury')
  with pytest.raises(ValueError, match='not both'):
    model.encode(TEXTS, prompt='query: ', prompt_name='query')
  with pytest.raises(ValueError, match="default_prompt_name 'nope' is not one of the prompts"):
    model.replace(default_prompt_name='nope')
  with pytest.raises(UnknownNameError, match=r"similarity function 'cosin'.*\(closest: cosine\)"):
    model.replace(similarity_fn='cosin')


def test_normalize_override(model, st_minilm):
  raw = model.encode(TEXTS, normalize=False)
  # Reference: sentence-transformers' token embeddings, mean-pooled in float64 (the model's
  # Pooling is 'mean'; its Normalize module is what normalize=False leaves out).
  tokens = st_minilm.encode(TEXTS, output_value='token_embeddings')
  want = np.stack([np.asarray(t, np.float64).mean(0) for t in tokens])
  np.testing.assert_allclose(raw, want, atol=1e-5)
  assert np.linalg.norm(raw, axis=1).min() > 2.0
  unnormalized = model.replace(spec=dataclasses.replace(model.spec, normalize=False))
  assert not unnormalized.normalize
  np.testing.assert_allclose(unnormalized.encode(TEXTS), raw, atol=1e-6)
  np.testing.assert_allclose(unnormalized.encode(TEXTS, normalize=True), model.encode(TEXTS),
                             atol=1e-6)


@pytest.mark.parametrize('fn', similarity.names())
def test_similarity_matches_sentence_transformers(fn, saved, st_saved):
  changed, _ = saved
  a = changed.encode(TEXTS, normalize=False)  # unnormalised, so cosine and dot differ
  b = a[1:3] * np.array([[1.0], [-0.5]], np.float32)
  st_saved.similarity_fn_name = fn
  got = changed.replace(similarity_fn=fn).similarity(a, b)
  assert got.shape == (len(TEXTS), 2)
  np.testing.assert_allclose(got, st_saved.similarity(a, b).numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(changed.replace(similarity_fn=fn).similarity(a[0], b), got[:1])


def test_similarity_hand_values():
  failures, tried = doctest.testmod(similarity, verbose=False)
  assert tried >= 3 and failures == 0
  np.testing.assert_allclose(similarity.get('manhattan')(np.zeros((1, 2)), [[1.0, -2.0]]), [[-3.0]])
  with pytest.raises(ValueError, match='dimensions 2 and 3'):
    similarity.cosine(np.ones((1, 2)), np.ones((1, 3)))


def test_save_load_round_trip(saved, st_saved):
  changed, folder = saved
  again = embedjax.load(folder)
  assert isinstance(again, EmbeddingModel)
  assert again.spec == changed.spec and again.dim == changed.dim == 384
  assert again.max_seq_length == changed.max_seq_length == 256
  jax.tree_util.tree_map(np.testing.assert_array_equal, changed.params, again.params)
  assert dict(again.prompts) == PROMPTS and again.default_prompt_name == 'query'
  assert again.similarity_fn == 'dot'
  config = json.loads((folder / 'config_sentence_transformers.json').read_text())
  assert config['prompts'] == PROMPTS and config['similarity_fn_name'] == 'dot'
  # sentence-transformers reads the same folder: weights, default prompt and similarity.
  got = again.encode(TEXTS)
  np.testing.assert_allclose(got, changed.encode(TEXTS), atol=1e-6)
  np.testing.assert_allclose(got, st_saved.encode(TEXTS), atol=1e-5)
  np.testing.assert_allclose(again.encode(TEXTS, prompt_name='passage'),
                             st_saved.encode(TEXTS, prompt_name='passage'), atol=1e-5)
  assert st_saved.default_prompt_name == 'query'
  # The parameter count is the encoder's: sentence-transformers' tensors less BERT's unused pooler.
  st_count = sum(p.numel() for n, p in st_saved.named_parameters() if '.pooler.' not in n)
  assert again.num_params == st_count
  text = repr(again)
  for part in (f"EmbeddingModel('{folder}'", f'params={st_count / 1e6:.1f}M', 'dim=384',
               "pooling='mean'", 'normalize=True', "similarity='dot'",
               "prompts=['passage', 'query']"):
    assert part in text, text


# --- exports -------------------------------------------------------------------------------------

def _submodule_names(package) -> set[str]:
  return {m.name for m in pkgutil.iter_modules(package.__path__)}


@pytest.mark.parametrize('name', PACKAGES)
def test_every_exported_name_resolves(name):
  package = sys.modules.get(name) or __import__(name, fromlist=['__all__'])
  exported = package.__all__
  assert len(exported) == len(set(exported)), name
  submodules = _submodule_names(package)
  for attr in exported:
    value = getattr(package, attr)
    assert value is not None, f'{name}.{attr}'
    # A name shared with a submodule is the submodule, or the function the submodule is named
    # after (``losses.matryoshka``, ``quant.compose``, ``search.rescore``), never anything else.
    if attr in submodules:
      module = sys.modules[f'{name}.{attr}']
      assert value is module or value is getattr(module, attr), f'{name}.{attr}'
  assert set(exported) <= set(dir(package))
  with pytest.raises(AttributeError, match='has no attribute'):
    getattr(package, 'no_such_name')


def test_every_subpackage_is_exported_from_the_top():
  packages = {m.name for m in pkgutil.iter_modules(embedjax.__path__) if m.ispkg}
  assert packages <= set(embedjax.__all__)
  assert embedjax.load is embedjax.models.load
  from embedjax.encoding import encode
  assert embedjax.encode is encode


def test_import_is_light_and_never_imports_reference_libraries():
  # In a fresh interpreter: ``import embedjax`` imports no jax (it takes over a second) and no
  # reference library; resolving every exported name still imports no reference library.
  script = f"""
import importlib, sys
import embedjax
heavy = [m for m in ('jax', 'flax', 'tensorflow_datasets') + {REFERENCE_LIBRARIES!r}
         if m in sys.modules]
assert not heavy, f'import embedjax imported {{heavy}}'
for name in {PACKAGES!r}:
  package = importlib.import_module(name)
  for attr in package.__all__:
    getattr(package, attr)
loaded = [m for m in {REFERENCE_LIBRARIES!r} if m in sys.modules]
assert not loaded, f'embedjax imported {{loaded}}'
print('ok')
"""
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parents[1], timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-2000:]


# --- registries ----------------------------------------------------------------------------------

def test_every_registered_name_resolves():
  assert losses.names() == tuple(losses.LOSSES)
  for name in losses.names():
    assert losses.get(name) is losses.LOSSES[name] and callable(losses.get(name))
  assert set(search.SEARCHES) <= set(search.names())
  for name in search.names():
    assert callable(search.get(name)), name
  assert search.get('flat') is search.topk_blocked and search.get('pq') is search.asymmetric_topk
  from embedjax.evals.tasks import TASKS
  assert evals.task_names() == tuple(TASKS)
  for name in evals.task_names():
    task = evals.get_task(name)
    assert task is TASKS[name] and callable(task.load), name
  for name in quant.names():
    q = quant.get(name)
    assert callable(q.fit) and callable(q.encode) and callable(q.score_prepared), name
  assert quant.get('float8') is quant.QUANTIZERS['float8_e4m3']
  for name in similarity.names():
    assert callable(similarity.get(name))


@pytest.mark.parametrize('get, bad, closest, listed', [
    (losses.get, 'info_nse', 'info_nce', losses.names()),
    (search.get, 'hamm', 'hamming', search.names()),
    (evals.get_task, 'stsbb', 'stsb', evals.task_names()),
    (quant.get, 'int9', 'int8', quant.names()),
    (similarity.get, 'euclid', 'euclidean', similarity.names()),
])
def test_unknown_name_lists_choices_and_closest(get, bad, closest, listed):
  with pytest.raises(UnknownNameError) as info:
    get(bad)
  message = str(info.value)
  assert '\n' not in message and isinstance(info.value, ValueError)
  assert message.startswith('unknown ') and repr(bad) in message
  assert message.endswith(f'(closest: {closest})'), message
  assert all(name in message for name in listed), message


def test_unknown_name_without_a_close_match():
  with pytest.raises(UnknownNameError) as info:
    losses.get('zzzzzz')
  assert 'closest' not in str(info.value) and 'info_nce' in str(info.value)
  with pytest.raises(UnknownNameError, match=r"unknown search \['flat'\]"):
    search.get(['flat'])
