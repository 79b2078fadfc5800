"""Export to a sentence-transformers folder: loads there and gives the same embeddings."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from embedjax.encoding import encode
from embedjax.models.pretrained import export_sentence_transformers, load_pretrained, resolve_model_dir

st = pytest.importorskip('sentence_transformers')

TEXTS = ['A man is playing a guitar.', 'Embeddings compress meaning into vectors.',
         'The weather is lovely today!', 'JAX composes pure functions under jit.']


def test_export_round_trip_through_sentence_transformers(tmp_path, minilm):
  # Perturb the weights so the test cannot pass by re-reading the original files.
  params = jax.tree_util.tree_map(lambda x: x * 1.01, minilm.params)
  out = export_sentence_transformers(tmp_path / 'model', minilm.spec, params, minilm.tokenizer,
                                     extra=minilm.extra)
  model = st.SentenceTransformer(str(out), device='cpu')
  assert model.max_seq_length == 256
  want = model.encode(TEXTS)
  got = encode(minilm, TEXTS, params=params, progress=False)
  assert ((got * want).sum(1)).min() >= 0.99999
  base = encode(minilm, TEXTS, progress=False)
  assert ((got * base).sum(1)).min() < 0.99999  # the perturbation is visible

  again = load_pretrained(out)
  assert again.spec == minilm.spec
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, again.params)
  assert not list(tmp_path.glob('.model.tmp*'))


def test_export_overwrites_atomically(tmp_path, minilm):
  out = tmp_path / 'model'
  export_sentence_transformers(out, minilm.spec, minilm.params, minilm.tokenizer)
  export_sentence_transformers(out, minilm.spec, minilm.params, minilm.tokenizer)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['model']


def test_unknown_model_and_bad_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='neither a packaged model'):
    resolve_model_dir('no-such-model')
  (tmp_path / 'config.json').write_text('{"model_type": "bert",\n oops}')
  with pytest.raises(ValueError, match=r'config.json:2'):
    load_pretrained(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    load_pretrained(tmp_path)
