"""ColBERTv2 residual compression and PLAID-style search: packing, the round-trip bound, the
inverted lists, and equality with exact MaxSim search when every centroid is probed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.search import plaid
from embedjax.search.multivector import topk_maxsim


def _clustered_docs(rng, n=120, td=10, d=16, topics=12):
  """Documents whose tokens sit near a few topic directions (as real token vectors cluster)."""
  centers = rng.standard_normal((topics, d))
  topic = rng.integers(0, topics, size=(n, td))
  x = centers[topic] + 0.35 * rng.standard_normal((n, td, d))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  lengths = rng.integers(3, td + 1, size=n)
  mask = np.arange(td) < lengths[:, None]
  return x.astype(np.float32), mask, centers


def _queries(rng, centers, q=15, tq=6):
  topic = rng.integers(0, len(centers), size=(q, tq))
  x = centers[topic] + 0.35 * rng.standard_normal((q, tq, centers.shape[1]))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  return x.astype(np.float32), np.ones((q, tq), np.int32)


@pytest.fixture(scope='module')
def corpus():
  rng = np.random.default_rng(0)
  docs, mask, centers = _clustered_docs(rng)
  queries, qmask = _queries(rng, centers)
  codec = plaid.fit_codec(jax.random.key(0), docs[mask], 24, bits=2)
  return docs, mask, queries, qmask, codec


@pytest.mark.parametrize('bits', [1, 2, 4, 8])
def test_pack_unpack_round_trip(bits):
  levels = np.random.default_rng(bits).integers(0, 2 ** bits, size=(5, 13))
  packed = plaid._pack(levels, bits)
  assert packed.shape == (5, -(-13 * bits // 8)) and packed.dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(plaid._unpack(packed, bits, 13)), levels)


def test_codec_buckets_are_residual_quantiles_and_round_trip_within_a_bucket(corpus):
  docs, mask, _, _, codec = corpus
  tokens = docs[mask].astype(np.float64)
  centroids = np.asarray(codec.centroids, np.float64)
  np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-6)
  residuals = tokens - centroids[np.argmax(tokens @ centroids.T, axis=1)]
  np.testing.assert_allclose(np.asarray(codec.cutoffs), np.quantile(residuals, [0.25, 0.5, 0.75]),
                             rtol=1e-5, atol=1e-6)
  ids, packed = plaid.compress(codec, tokens)
  decoded = np.asarray(plaid.decompress(codec, ids, packed), np.float64)
  edges = np.concatenate([[residuals.min()], np.asarray(codec.cutoffs), [residuals.max()]])
  bucket = np.searchsorted(np.asarray(codec.cutoffs), residuals, side='right')
  width = edges[bucket + 1] - edges[bucket]
  assert np.all(np.abs(decoded - tokens) <= width + 1e-6)
  assert plaid.bytes_per_token(codec) == 2 + 16 * 2 // 8  # uint16 id + 16 dims x 2 bits


def test_inverted_lists_hold_exactly_the_documents_of_each_centroid(corpus):
  docs, mask, _, _, codec = corpus
  index = plaid.build_index(codec, docs, mask)
  ids = np.asarray(index.ids)
  for c in range(codec.centroids.shape[0]):
    want = np.flatnonzero(((ids == c) & mask).any(axis=1))
    got = index.lists_docs[index.lists_start[c]:index.lists_start[c + 1]]
    np.testing.assert_array_equal(got, want)
  assert index.bytes_per_doc() == pytest.approx(mask.sum(1).mean() * 6)


@pytest.mark.parametrize('keep_float', [False, True])
def test_probing_every_centroid_equals_exact_search(corpus, keep_float):
  docs, mask, queries, qmask, codec = corpus
  index = plaid.build_index(codec, docs, mask, keep_float=keep_float)
  stored = docs if keep_float else np.asarray(plaid.decompress(codec, index.ids, index.residuals))
  want_s, want_i = topk_maxsim(queries, qmask, stored, mask, 10)
  got_s, got_i = plaid.search(index, queries, qmask, 10, nprobe=codec.centroids.shape[0],
                              ndocs=len(docs), centroid_threshold=None)
  np.testing.assert_array_equal(got_i, np.asarray(want_i))
  np.testing.assert_allclose(got_s, np.asarray(want_s), rtol=1e-5, atol=1e-5)


def test_defaults_keep_the_recall_of_exact_search(corpus):
  docs, mask, queries, qmask, codec = corpus
  index = plaid.build_index(codec, docs, mask, keep_float=True)
  _, exact = topk_maxsim(queries, qmask, docs, mask, 10)
  _, got = plaid.search(index, queries, qmask, 10, ndocs=40)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, np.asarray(exact))])
  assert recall >= 0.95


def test_bad_input_is_refused(corpus):
  docs, mask, queries, qmask, codec = corpus
  empty = mask.copy()
  empty[7] = False
  with pytest.raises(ValueError, match=r'have no counted tokens.*\[7\]'):
    plaid.build_index(codec, docs, empty)
  index = plaid.build_index(codec, docs, mask)
  with pytest.raises(ValueError, match='dimension 8 but the index 16'):
    plaid.search(index, queries[..., :8], qmask, 3)
  with pytest.raises(ValueError, match='num_centroids'):
    plaid.fit_codec(jax.random.key(0), docs[mask][:5], 6)
  with pytest.raises(ValueError, match="init must be 'random' or 'kmeans\\+\\+'"):
    plaid.fit_codec(jax.random.key(0), docs[mask], 6, init='forgy')


def test_assignment_over_several_row_blocks_equals_numpy_argmax():
  rng = np.random.default_rng(1)
  tokens = rng.standard_normal((plaid._ROW_BLOCK + 905, 8)).astype(np.float32)
  centroids = rng.standard_normal((37, 8)).astype(np.float32)
  want = np.argmax(tokens.astype(np.float64) @ centroids.T.astype(np.float64), axis=1)
  np.testing.assert_array_equal(np.asarray(plaid.assign(centroids, tokens)), want)


def test_blocked_lloyd_takes_the_same_steps_as_pq_lloyd():
  """Against quant.pq.lloyd (one (M, K) array), including the reseeding of an empty cluster: the
  third seed is far from every row, so it owns none after the first assignment."""
  from embedjax.quant.pq import lloyd
  rng = np.random.default_rng(2)
  x = rng.standard_normal((plaid._ROW_BLOCK + 300, 6)).astype(np.float32)
  seeds = np.concatenate([x[:2], np.full((1, 6), 50.0, np.float32), x[2:9]])
  for iters in (1, 5):
    want = np.asarray(jax.jit(lloyd, static_argnums=2)(jnp.asarray(x), jnp.asarray(seeds), iters))
    np.testing.assert_allclose(np.asarray(plaid.blocked_lloyd(x, seeds, iters)), want,
                               rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(plaid.blocked_lloyd(x, seeds, 1))[2]).max() < 10  # reseeded


def test_kmeans_plusplus_seeding_gives_a_codec_whose_search_keeps_recall(corpus):
  docs, mask, queries, qmask, _ = corpus  # the fixture's codec is seeded at random (the default)
  codec = plaid.fit_codec(jax.random.key(3), docs[mask], 24, bits=2, init='kmeans++')
  index = plaid.build_index(codec, docs, mask, keep_float=True)
  _, exact = topk_maxsim(queries, qmask, docs, mask, 10)
  _, got = plaid.search(index, queries, qmask, 10, ndocs=40)
  assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, np.asarray(exact))]) >= 0.95


def test_defaults_keep_the_recall_of_exhaustive_search_on_a_scifact_sized_corpus():
  """At its defaults, PLAID's candidate generation and centroid pruning keep recall@10 >= 0.95 of
  the exhaustive MaxSim search over the same compressed tokens, on as many documents as SciFact's
  corpus (5,183; fewer and shorter token vectors, so it runs in seconds), and >= 0.95 of exact
  float MaxSim when the index keeps float tokens for the final re-scoring. What compression itself
  costs against float tokens is measured on SciFact's real tokens by
  benchmarks/multivector_sweep_cpu.py and the beyond-single-vector study, not here."""
  rng = np.random.default_rng(5)
  n, td, d, topics = 5183, 16, 32, 400
  centers = rng.standard_normal((topics, d))
  own = rng.integers(0, topics, size=(n, 3))  # each document is about 3 topics
  topic = np.take_along_axis(own, rng.integers(0, 3, size=(n, td)), axis=1)
  docs = centers[topic] + 0.5 * rng.standard_normal((n, td, d))
  docs /= np.linalg.norm(docs, axis=-1, keepdims=True)
  mask = np.arange(td) < rng.integers(4, td + 1, size=n)[:, None]
  about = own[rng.integers(0, n, size=100)]  # 100 queries, each on a document's topics
  qt = np.take_along_axis(about, rng.integers(0, 3, size=(100, 8)), axis=1)
  queries = centers[qt] + 0.5 * rng.standard_normal((100, 8, d))
  queries = (queries / np.linalg.norm(queries, axis=-1, keepdims=True)).astype(np.float32)
  qmask = np.ones((100, 8), np.int32)
  docs = docs.astype(np.float32)
  tokens = docs[mask]
  n_centroids = int(2 ** np.floor(np.log2(16 * np.sqrt(len(tokens)))))  # ColBERTv2's count
  codec = plaid.fit_codec(jax.random.key(0), tokens, n_centroids, bits=2, iters=4)
  index = plaid.build_index(codec, docs, mask)
  stored = np.array(plaid.decompress(codec, index.ids, index.residuals))
  _, exhaustive = topk_maxsim(queries, qmask, stored, mask, 10)
  _, got = plaid.search(index, queries, qmask, 10)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, np.asarray(exhaustive))])
  assert recall >= 0.95, recall
  # With the float tokens kept for the final re-scoring (candidates still from the codes), the
  # same search keeps recall@10 >= 0.95 of exact float MaxSim: the candidates hold the answers.
  index = plaid.build_index(codec, docs, mask, keep_float=True)
  _, exact = topk_maxsim(queries, qmask, docs, mask, 10)
  _, got = plaid.search(index, queries, qmask, 10)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, np.asarray(exact))])
  assert recall >= 0.95, recall
