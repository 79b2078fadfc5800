"""Bucketed padding of training batches (data.padding): the ladder, one length per global batch,
and the same loss and gradients as padding to the maximum lengths (without dropout)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from batches import FAST_COMPILE, random_batch

from embedjax.config import ConfigError
from embedjax.models.bert import BertConfig
from embedjax.models.pretrained import init_params, load_spec
from embedjax.models.spec import EmbedderSpec
from embedjax.train import data as train_data
from embedjax.train.step import StepConfig, loss_and_grads


@pytest.mark.parametrize('longest, max_length, want', [
    (1, 512, 64), (64, 512, 64), (65, 512, 128), (129, 512, 256), (300, 512, 512),
    (40, 48, 48), (65, 100, 100), (10, 12, 12)])
def test_padded_length_is_the_shortest_rung_holding_the_longest_text(longest, max_length, want):
  ids = [[1] * 3, [1] * longest, [1]]
  assert train_data.padded_length(ids, max_length, 'bucket') == want
  assert train_data.padded_length(ids, max_length, 'max_length') == max_length


def test_an_unknown_padding_is_one_line_naming_the_field():
  with pytest.raises(ConfigError, match="data.padding 'longest'"):
    train_data.padded_length([[1]], 64, 'longest')


@pytest.fixture(scope='module')
def tokenizer():
  return load_spec('all-MiniLM-L6-v2')[1]


def test_bucketed_columns_are_the_max_length_columns_cut_and_agree_across_processes(tokenizer):
  long_doc = ' '.join(['retrieval'] * 90)  # ~92 tokens: the documents' rung is 128
  rows = {'query': np.array(['a short query', 'b', 'another query', 'c d e']),
          'positive': np.array([long_doc, 'short', 'doc', 'x']),
          'negative': np.array(['n1', 'n2', 'n3', 'n4']),
          'doc_key': np.arange(4)}
  kw = {'query_tok': tokenizer.with_max_length(256), 'doc_tok': tokenizer.with_max_length(512)}
  full = train_data.tokenize_batch(rows, padding='max_length', **kw)
  assert full['query_ids'].shape == (4, 256) and full['doc_ids'].shape == (4, 512)
  halves = [train_data.tokenize_batch(rows, padding='bucket', process_index=i, process_count=2,
                                      **kw) for i in range(2)]
  # The long document is in the first process's rows; both slices take the global batch's
  # lengths, and negatives share the documents' (they are one column block of the loss).
  for part in halves:
    assert part['query_ids'].shape == (2, 64)
    assert part['doc_ids'].shape == (2, 128) and part['neg_ids'].shape == (2, 1, 128)
  for key in ('query', 'doc', 'neg'):
    both = np.concatenate([h[f'{key}_ids'] for h in halves])
    mask = np.concatenate([h[f'{key}_mask'] for h in halves])
    width = both.shape[-1]
    np.testing.assert_array_equal(both, full[f'{key}_ids'][..., :width])
    np.testing.assert_array_equal(mask, full[f'{key}_mask'][..., :width])
    assert not full[f'{key}_mask'][..., width:].any()  # only padding was cut


BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=40)


@pytest.mark.parametrize('pooling', ['mean', 'cls'])
def test_the_loss_and_gradients_do_not_depend_on_the_padded_length(pooling):
  spec = EmbedderSpec(bert=BERT, pooling=pooling, normalize=True, max_seq_length=40)
  params = {'encoder': init_params(BERT, jax.random.key(0))}
  short = random_batch(np.random.default_rng(0), 8, 6, 10, h=1)
  longer = {k: np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, 40 - v.shape[-1])])
            if k.endswith(('_ids', '_mask')) else v for k, v in short.items()}
  cfg = StepConfig(spec=spec, dropout=False)  # (dropout masks are drawn for the padded shape)
  fn = jax.jit(lambda p, b: loss_and_grads(cfg, p, b, jax.random.key(1)),
               compiler_options=FAST_COMPILE)
  (l1, _), g1 = fn(params, short)
  (l2, _), g2 = fn(params, longer)
  assert float(l1) == pytest.approx(float(l2), rel=1e-6)  # float rounding only
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g2)
