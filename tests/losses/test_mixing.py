"""Online hard-negative mixing (embedjax.losses.mixing) against a float64 numpy reference that
replays the same random choices, hand-checked cases, and the stopped gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.losses.contrastive import info_nce
from embedjax.losses.mixing import (MixChoices, candidates, draw_choices, hardest_negatives,
                                    mix_hard_negatives, mix_negatives, synthesize_negatives)

B, H, D = 6, 2, 8
SCALE = 20.0


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  q = _unit(rng.normal(size=(B, D)))
  d = _unit(q + 0.6 * rng.normal(size=(B, D)))
  # Hard negatives near their query, so they are among the hardest.
  h = _unit(q[:, None] + 0.9 * rng.normal(size=(B, H, D)))
  return q.astype(np.float32), d.astype(np.float32), h.astype(np.float32)


# --- float64 numpy reference ----------------------------------------------------------------------

def np_candidates(d, h):
  return np.concatenate([d, np.swapaxes(h, 0, 1).reshape(-1, d.shape[1])], axis=0)


def np_hardest(q, docs, k, doc_ids=None, ratio=None):
  sims = q @ docs.T
  out = []
  for i in range(q.shape[0]):
    allowed = [j for j in range(docs.shape[0]) if j != i
               and not (doc_ids is not None and j < q.shape[0] and doc_ids[j] == doc_ids[i])
               and not (ratio is not None
                        and sims[i, j] > sims[i, i] - (1 - ratio) * abs(sims[i, i]))]
    ranked = sorted(allowed, key=lambda j: (-sims[i, j], j))[:k]
    out.append(ranked + [ranked[0]] * (k - len(ranked)))
  return np.array(out)


def np_mix(q, docs, hardest, c: MixChoices):
  out = []
  for i in range(q.shape[0]):
    hard = docs[hardest[i]]
    rows = [c.alpha[i, m] * hard[c.pairs[i, m, 0]] + (1 - c.alpha[i, m]) * hard[c.pairs[i, m, 1]]
            for m in range(c.alpha.shape[1])]
    rows += [c.beta[i, m] * q[i] + (1 - c.beta[i, m]) * hard[c.query_pick[i, m]]
             for m in range(c.beta.shape[1])]
    out.append(_unit(np.array(rows)))
  return np.array(out)


def np_info_nce(q, d, negs, doc_ids=None, ratio=None):
  """InfoNCE (query_to_doc, joint, cosine) with negs (B, M, D) as every query's negatives."""
  docs = np_candidates(d, negs)
  sims = _unit(q) @ _unit(docs).T
  losses = []
  for i in range(q.shape[0]):
    keep = [j for j in range(docs.shape[0])
            if j == i or not ((doc_ids is not None and j < q.shape[0] and doc_ids[j] == doc_ids[i])
                              or (ratio is not None and
                                  sims[i, j] > sims[i, i] - (1 - ratio) * abs(sims[i, i])))]
    logits = SCALE * sims[i, keep]
    losses.append(np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - SCALE * sims[i, i])
  return float(np.mean(losses))


def _np_choices(c: MixChoices) -> MixChoices:
  return MixChoices(*(np.asarray(x, np.float64) if x.dtype.kind == 'f' else np.asarray(x)
                      for x in c))


# --- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('doc_ids, ratio', [(None, None), ((0, 1, 2, 0, 4, 5), None),
                                            ((0, 1, 2, 3, 4, 5), 0.9)])
def test_wrapped_info_nce_equals_numpy_with_the_same_choices(batch, doc_ids, ratio):
  q, d, h = batch
  key = jax.random.key(7)
  k, s, s2 = 4, 3, 2
  kwargs = {}
  if doc_ids is not None:
    kwargs['doc_ids'] = jnp.array(doc_ids)
  if ratio is not None:
    kwargs['false_negative_ratio'] = ratio
  loss_fn = jax.jit(mix_hard_negatives(info_nce, n_synthetic=s, n_hardest=k, n_query_mixed=s2))
  loss, metrics = loss_fn(q, d, hard_negatives=h, key=key, **kwargs)

  choices = _np_choices(draw_choices(key, B, n_hardest=k, n_synthetic=s, n_query_mixed=s2))
  q64, d64, h64 = (x.astype(np.float64) for x in batch)
  docs = np_candidates(d64, h64)
  hardest = np_hardest(q64, docs, k, doc_ids, ratio)
  np.testing.assert_array_equal(
      np.asarray(hardest_negatives(q, candidates(d, h), n_hardest=k, false_negative_ratio=ratio,
                                   doc_ids=kwargs.get('doc_ids'))), hardest)
  synthetic = np_mix(q64, docs, hardest, choices)
  np.testing.assert_allclose(
      np.asarray(synthesize_negatives(key, q, d, h, n_synthetic=s, n_hardest=k, n_query_mixed=s2,
                                      false_negative_ratio=ratio, doc_ids=kwargs.get('doc_ids'))),
      synthetic, atol=1e-6)
  expected = np_info_nce(q64, d64, np.concatenate([h64, synthetic], axis=1), doc_ids, ratio)
  assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-5)
  assert float(metrics['synthetic_similarity']) == pytest.approx(
      float(np.mean(np.einsum('bd,bsd->bs', q64, synthetic))), abs=1e-6)
  # The synthetic negatives are harder than the average real one: the loss grows.
  assert float(loss) > np_info_nce(q64, d64, h64, doc_ids, ratio)


def test_hardest_negatives_by_hand():
  # Query 0's candidates: its positive (col 0, excluded), query 1's positive (col 1, a duplicate
  # of doc 0 by id, excluded), query 2's positive (0.5) and the hard negatives (cols 3..5).
  q = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  d = jnp.array([[1.0, 0.0], [0.99, 0.141], [0.5, 0.866]])
  h = jnp.array([[[0.8, 0.6]], [[0.6, 0.8]], [[0.0, -1.0]]])
  docs = candidates(d, h)
  np.testing.assert_array_equal(np.asarray(docs[3:]), np.asarray(h[:, 0]))
  got = hardest_negatives(q, docs, n_hardest=3, doc_ids=jnp.array([5, 5, 7]))
  np.testing.assert_array_equal(np.asarray(got[0]), [3, 4, 2])
  # Without ids the near-duplicate positive of query 1 is query 0's hardest negative.
  assert int(hardest_negatives(q, docs, n_hardest=1)[0, 0]) == 1
  # A row with fewer allowed candidates than n_hardest repeats its hardest.
  one = hardest_negatives(q[:1], d[:2], n_hardest=1)
  assert one.shape == (1, 1) and int(one[0, 0]) == 1
  with pytest.raises(ValueError, match='n_hardest 6'):
    hardest_negatives(q, docs, n_hardest=6)


def test_mixed_negatives_by_hand():
  q = jnp.array([[1.0, 0.0]])
  docs = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
  hardest = jnp.array([[2, 1]])
  # alpha = 0.25: 0.25 (0.6, 0.8) + 0.75 (0, 1) = (0.15, 0.95); beta = 0.4 with rank 1:
  # 0.4 (1, 0) + 0.6 (0, 1) = (0.4, 0.6).
  choices = MixChoices(pairs=jnp.array([[[0, 1]]]), alpha=jnp.array([[0.25]]),
                       query_pick=jnp.array([[1]]), beta=jnp.array([[0.4]]))
  got = np.asarray(mix_negatives(q, docs, hardest, choices))
  np.testing.assert_allclose(got[0], [np.array([0.15, 0.95]) / np.hypot(0.15, 0.95),
                                      np.array([0.4, 0.6]) / np.hypot(0.4, 0.6)], atol=1e-6)


def test_no_gradient_flows_through_the_synthetic_negatives(batch):
  q, d, h = batch
  key = jax.random.key(3)
  wrapped = mix_hard_negatives(info_nce, n_synthetic=3, n_hardest=4, n_query_mixed=2)
  synthetic = synthesize_negatives(key, q, d, h, n_synthetic=3, n_hardest=4, n_query_mixed=2)
  g_mixed = jax.grad(lambda q, d, h: wrapped(q, d, hard_negatives=h, key=key)[0],
                     argnums=(0, 1, 2))(q, d, h)
  g_const = jax.grad(lambda q, d, h: info_nce(
      q, d, hard_negatives=jnp.concatenate([h, synthetic], axis=1))[0], argnums=(0, 1, 2))(q, d, h)
  for a, b in zip(g_mixed, g_const):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_choices_ranges_and_key_dependence():
  c = draw_choices(jax.random.key(0), 64, n_hardest=5, n_synthetic=8, n_query_mixed=8)
  assert c.pairs.shape == (64, 8, 2) and c.query_pick.shape == (64, 8)
  assert int(c.pairs.min()) == 0 and int(c.pairs.max()) == 4
  assert 0.0 <= float(c.alpha.min()) and float(c.alpha.max()) < 1.0
  assert 0.0 <= float(c.beta.min()) and float(c.beta.max()) < 0.5 and float(c.beta.max()) > 0.4
  other = draw_choices(jax.random.key(1), 64, n_hardest=5, n_synthetic=8, n_query_mixed=8)
  assert not np.array_equal(np.asarray(c.alpha), np.asarray(other.alpha))


def test_options_are_checked():
  with pytest.raises(ValueError, match='nothing to mix'):
    mix_hard_negatives(info_nce, n_synthetic=0)
  with pytest.raises(ValueError, match='n_query_mixed'):
    mix_hard_negatives(info_nce, n_synthetic=1, n_query_mixed=-1)
