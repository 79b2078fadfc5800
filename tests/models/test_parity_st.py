"""Parity with sentence-transformers on real text: token ids of all STS-B test sentences and the
embeddings of a quarter of them plus the longest (runs in CI)."""

from __future__ import annotations

import numpy as np

from embedjax.encoding import encode
from embedjax.models.embedder import embed


def _stsb_test_sentences(data_dir):
  texts = []
  with open(data_dir / 'stsb' / 'sts-test.csv', encoding='utf-8') as f:
    for line in f:
      fields = line.rstrip('\n').split('\t')
      texts += [fields[5], fields[6]]
  return texts


def test_stsb_token_ids_and_embeddings_match_sentence_transformers(data_dir, minilm, st_minilm):
  texts = _stsb_test_sentences(data_dir)
  assert len(texts) == 2 * 1379
  ours = minilm.tokenizer.encode(texts)
  ref = st_minilm.tokenize(texts)
  ref_ids = [list(row[m.bool()].numpy()) for row, m in zip(ref['input_ids'], ref['attention_mask'])]
  assert ours == ref_ids

  # Embeddings of every fourth text and the 32 longest (where truncation and the longest padded
  # batches are): the token ids above are compared for all of them; encoding all 2,758 twice
  # took a minute of the suite for no case the subset lacks.
  longest = sorted(range(len(texts)), key=lambda i: -len(ours[i]))[:32]
  texts = [texts[i] for i in sorted(set(range(0, len(texts), 4)) | set(longest))]
  got = encode(minilm, texts, progress=False)
  want = st_minilm.encode(texts, batch_size=64, convert_to_numpy=True)
  cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
  assert cos.min() >= 0.99999, cos.min()
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_long_texts_truncate_at_256_like_sentence_transformers(minilm, st_minilm):
  # The packaged tokenizer.json truncates at 128; sentence-transformers uses max_seq_length 256.
  long = ' '.join(['embedding'] * 400) + ' end'
  mid = ' '.join(f'word{i}' for i in range(90))
  texts = [long, mid, 'short one']
  ours = minilm.tokenizer.encode(texts)
  assert len(ours[0]) == 256 == st_minilm.max_seq_length
  ref = st_minilm.tokenize(texts)
  assert ours[0] == list(ref['input_ids'][0].numpy())
  got = encode(minilm, texts, progress=False)
  want = st_minilm.encode(texts)
  assert ((got * want).sum(1)).min() >= 0.99999


def test_packed_equals_padded(minilm):
  texts = ['a b c', 'The cat sat on the mat.', 'x' * 50, 'one more sentence about embeddings and JAX']
  packed = encode(minilm, texts, progress=False, rows_per_batch=2, max_segments=4)
  batch = minilm.tokenizer(texts)
  padded = np.asarray(embed(minilm.params, minilm.spec, batch['input_ids'], batch['attention_mask']))
  np.testing.assert_allclose(packed, padded, atol=1e-5)
