"""Bucketed padding of training batches (data.padding): the ladder, one length per global batch,
and the same loss and gradients as padding to the maximum lengths (without dropout)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from batches import FAST_COMPILE, random_batch

from embedjax.config import ConfigError, load_config
from embedjax.models.bert import BertConfig
from embedjax.models.decoder import DecoderConfig
from embedjax.models.pretrained import init_model_params, init_params, load_spec
from embedjax.models.spec import EmbedderSpec
from embedjax.train import batches as train_batches
from embedjax.train.step import StepConfig, loss_and_grads


@pytest.mark.parametrize('longest, max_length, want', [
    (1, 512, 64), (64, 512, 64), (65, 512, 128), (129, 512, 256), (300, 512, 512),
    (40, 48, 48), (65, 100, 100), (10, 12, 12)])
def test_padded_length_is_the_shortest_rung_holding_the_longest_text(longest, max_length, want):
  ids = [[1] * 3, [1] * longest, [1]]
  assert train_batches.padded_length(ids, max_length, 'bucket') == want
  assert train_batches.padded_length(ids, max_length, 'max_length') == max_length


def test_an_unknown_padding_is_one_line_naming_the_field():
  with pytest.raises(ConfigError, match="data.padding 'longest'"):
    train_batches.padded_length([[1]], 64, 'longest')


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
  full = train_batches.tokenize_batch(rows, padding='max_length', pack_segments=16, **kw)
  assert full['query_ids'].shape == (4, 256) and full['doc_ids'].shape == (4, 512)
  halves = [train_batches.tokenize_batch(rows, padding='bucket', pack_segments=16, process_index=i,
                                         process_count=2, **kw) for i in range(2)]
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
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         g1, g2)


def _texts(batch: dict, key: str) -> list[list[int]]:
  """The token id lists of a padded column (rows of (B, L) or (B, H, L))."""
  ids, mask = batch[f'{key}_ids'], batch[f'{key}_mask']
  ids, mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])
  return [row[m > 0].tolist() for row, m in zip(ids, mask)]


def _packed(batch: dict, segments: int, processes: int = 1, row_multiple: int = 1) -> list[dict]:
  """Each process's packed form of a padded batch (rows split in process order)."""
  b = len(batch['query_ids'])
  per = b // processes
  q, d = _texts(batch, 'query'), _texts(batch, 'doc')
  negs = _texts(batch, 'neg') if 'neg_ids' in batch else []
  h = len(negs) // b
  out = []
  for p in range(processes):
    part = {'doc_key': batch['doc_key'][p * per:(p + 1) * per]}
    rows = [q[i * per:(i + 1) * per] for i in range(processes)]
    arrays, place = train_batches.pack_column(rows, batch['query_ids'].shape[1], segments,
                                              row_multiple, p, 0)
    part.update({f'query_{k}': v for k, v in arrays.items()}, query_index=np.array(place))
    rows = [d[i * per:(i + 1) * per] + negs[i * per * h:(i + 1) * per * h]
            for i in range(processes)]
    arrays, place = train_batches.pack_column(rows, batch['doc_ids'].shape[1], segments,
                                              row_multiple, p, 0)
    part.update({f'doc_{k}': v for k, v in arrays.items()}, doc_index=np.array(place[:per]))
    if h:
      part['neg_index'] = np.array(place[per:]).reshape(per, h)
    out.append(part)
  return out


def test_packed_columns_hold_every_text_at_its_place_with_one_row_count_for_all_processes():
  batch = random_batch(np.random.default_rng(2), 8, 12, 20, h=2)
  parts = _packed(batch, segments=4, processes=2)
  assert parts[0]['doc_ids'].shape == parts[1]['doc_ids'].shape
  ids = np.concatenate([p['doc_ids'] for p in parts])
  seg = np.concatenate([p['doc_segments'] for p in parts])
  pos = np.concatenate([p['doc_positions'] for p in parts])
  want = _texts(batch, 'doc') + _texts(batch, 'neg')
  places = np.concatenate([np.concatenate([p['doc_index'], p['neg_index'].reshape(-1)])
                           for p in parts])
  # Process p's documents come first in its texts, then its negatives row by row.
  order = [*range(4), *range(8, 16), *range(4, 8), *range(16, 24)]
  for text, place in zip([want[i] for i in order], places):
    row, slot = divmod(int(place), 4)
    where = seg[row] == slot + 1
    assert ids[row][where].tolist() == text
    assert pos[row][where].tolist() == list(range(len(text)))
  assert len(set(places.tolist())) == len(places)


DECODER = DecoderConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
                        attention='bidirectional')


@pytest.mark.parametrize('pooling, model', [('mean', 'bert'), ('cls', 'bert'),
                                            ('mean', 'decoder'), ('last_token', 'decoder')])
def test_a_packed_batch_gives_the_padded_batchs_loss_and_gradients(pooling, model):
  if model == 'bert':
    spec = EmbedderSpec(bert=BERT, pooling=pooling, normalize=True, max_seq_length=40)
  else:  # rotary positions restart in every packed text
    spec = EmbedderSpec(decoder=DECODER, pooling=pooling, normalize=True, max_seq_length=40)
  params = {'encoder': init_model_params(spec, jax.random.key(0))}
  padded = random_batch(np.random.default_rng(3), 8, 6, 10, h=1)
  (packed,) = _packed(padded, segments=4)
  assert packed['doc_ids'].shape[0] < 16  # 16 texts in fewer rows
  want = _loss_and_grads(StepConfig(spec=spec, dropout=False), params, padded)
  got = _loss_and_grads(StepConfig(spec=spec, dropout=False, pack_segments=4), params, packed)
  assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         got[1], want[1])


def _loss_and_grads(cfg, params, batch):
  (loss, _), grads = jax.jit(lambda p, b: loss_and_grads(cfg, p, b, jax.random.key(1)),
                             compiler_options=FAST_COMPILE)(params, batch)
  return loss, grads


@pytest.mark.parametrize('grad_cache', [False, True])
def test_packed_rows_in_chunks_give_the_padded_batchs_loss_and_gradients(grad_cache):
  # train.chunk_size counts rows; gradient caching re-embeds each chunk of rows under vjp.
  spec = EmbedderSpec(bert=BERT, pooling='mean', normalize=True, max_seq_length=40)
  params = {'encoder': init_params(BERT, jax.random.key(0))}
  padded = random_batch(np.random.default_rng(4), 8, 6, 10, h=1)
  (packed,) = _packed(padded, segments=4, row_multiple=2)
  want = _loss_and_grads(StepConfig(spec=spec, dropout=False), params, padded)
  got = _loss_and_grads(StepConfig(spec=spec, dropout=False, pack_segments=4, chunk_size=2,
                                   grad_cache=grad_cache), params, packed)
  assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         got[1], want[1])


def test_a_packed_batch_meets_a_padded_step_with_one_line():
  spec = EmbedderSpec(bert=BERT, pooling='mean', normalize=True, max_seq_length=40)
  (packed,) = _packed(random_batch(np.random.default_rng(3), 4, 6, 10), segments=4)
  with pytest.raises(ConfigError, match="the batch is packed but the step expects padded"):
    loss_and_grads(StepConfig(spec=spec), {}, packed, jax.random.key(0))


def test_packing_with_what_it_does_not_support_is_one_line_naming_the_fields():
  from embedjax.train.loop import dry_build
  tiny = str(Path(__file__).parents[2] / 'configs' / 'tiny_synthetic.py')
  with pytest.raises(ConfigError, match="data.padding 'pack' trains single vectors without "
                     "layer_elastic.*loss.layer_elastic 'adaptive_layer'"):
    dry_build(load_config(tiny, ['--config.data.padding=pack',
                                 '--config.loss.layer_elastic=adaptive_layer']))
  with pytest.raises(ConfigError, match="data.pack_segments 0: must be positive"):
    dry_build(load_config(tiny, ['--config.data.padding=pack', '--config.data.pack_segments=0']))
  packed = dry_build(load_config(tiny, ['--config.data.padding=pack']))['batch']
  assert {'query_segments', 'doc_index', 'doc_key'} <= set(packed) and 'doc_mask' not in packed


SHARDED = """
import json, os, sys
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from batches import random_batch
from test_padding import BERT, _packed
from embedjax.models.pretrained import init_params
from embedjax.models.spec import EmbedderSpec
from embedjax.train import sharding
from embedjax.train.step import StepConfig, loss_and_grads
spec = EmbedderSpec(bert=BERT, pooling='mean', normalize=True, max_seq_length=40)
cfg = StepConfig(spec=spec, dropout=False, pack_segments=4)
params = {'encoder': init_params(BERT, jax.random.key(0))}
(packed,) = _packed(random_batch(np.random.default_rng(5), 8, 6, 10, h=1), 4, row_multiple=4)
fn = jax.jit(lambda p, b: loss_and_grads(cfg, p, b, jax.random.key(1))[0][0])
mesh = sharding.make_mesh(data=4)
print(json.dumps({'rows': [packed['query_ids'].shape[0], packed['doc_ids'].shape[0]],
                  'one': float(fn(params, packed)),
                  'four': float(fn(params, sharding.global_batch(mesh, packed)))}))
"""


def test_a_packed_batch_over_four_devices_gives_the_one_device_loss():
  import json
  import subprocess
  import sys
  out = subprocess.run([sys.executable, '-c', SHARDED, str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=300, check=True)
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert all(r % 4 == 0 for r in got['rows'])  # rows over the 4 devices' shards
  assert got['four'] == pytest.approx(got['one'], rel=1e-6)
