"""Model merging: identities by construction, and peft's tensor-level merge utilities as the
reference for task arithmetic, TIES and DARE on random pytrees; SLERP against float64 numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax import merging

torch = pytest.importorskip('torch')
merge_utils = pytest.importorskip('peft.utils.merge_utils')


def _tree(rng, scale=1.0):
  return {'layer': {'kernel': jnp.asarray(scale * rng.standard_normal((6, 5)), jnp.float32),
                    'bias': jnp.asarray(scale * rng.standard_normal((5,)), jnp.float32)},
          'embedding': jnp.asarray(scale * rng.standard_normal((4, 3, 2)), jnp.float32)}


@pytest.fixture(scope='module')
def models():
  rng = np.random.default_rng(0)
  base = _tree(rng)
  tuned = [jax.tree_util.tree_map(lambda b, d: b + d, base, _tree(rng, 0.1)) for _ in range(3)]
  return base, tuned


def _assert_trees_close(a, b, **kw):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw),
                         a, b)


def test_merging_identical_models_returns_the_model(models):
  base, tuned = models
  same = [tuned[0]] * 3
  _assert_trees_close(merging.uniform_soup(same), tuned[0], rtol=1e-6, atol=1e-6)
  _assert_trees_close(merging.task_arithmetic(base, same, [1 / 3] * 3), tuned[0], rtol=1e-5,
                      atol=1e-6)
  _assert_trees_close(merging.ties(base, same, [1.0] * 3, density=1.0), tuned[0], rtol=1e-5,
                      atol=1e-6)
  _assert_trees_close(merging.slerp(tuned[0], tuned[0], 0.3), tuned[0], rtol=1e-6, atol=1e-7)
  soup, kept = merging.greedy_soup(same, lambda p: 1.0)
  assert kept == [0, 1, 2]
  _assert_trees_close(soup, tuned[0], rtol=1e-6, atol=1e-6)


def _peft_per_leaf(fn, base, tuned, weights, **kw):
  """base + peft's merge of the task vectors, leaf by leaf (torch float64)."""
  taus = merging.task_vectors(base, tuned)

  def leaf(b, *t):
    tensors = [torch.from_numpy(np.asarray(x, np.float64)) for x in t]
    merged = fn(tensors, torch.tensor(weights, dtype=torch.float64), **kw).numpy()
    return np.asarray(b, np.float64) + merged
  return jax.tree_util.tree_map(leaf, base, *taus)


def test_task_arithmetic_and_ties_equal_peft(models):
  base, tuned = models
  w = [0.5, 0.3, 0.7]
  _assert_trees_close(merging.task_arithmetic(base, tuned, w),
                      _peft_per_leaf(merge_utils.task_arithmetic, base, tuned, w), rtol=1e-5,
                      atol=1e-6)
  for majority in ('total', 'frequency'):
    for density in (0.3, 0.6):
      _assert_trees_close(
          merging.ties(base, tuned, w, density=density, majority=majority),
          _peft_per_leaf(merge_utils.ties, base, tuned, w, density=density,
                         majority_sign_method=majority), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('merge', ['linear', 'ties'])
def test_dare_equals_peft_with_the_same_drop_mask(models, merge, monkeypatch):
  base, tuned = models
  w, density = [0.5, 0.3, 0.7], 0.4
  masks = merging.dare_masks(jax.random.key(0), base, 3, density)
  ours = merging.dare(base, tuned, w, density, masks=masks, merge=merge)
  # peft draws its mask with torch.bernoulli, once per task tensor in order: hand it ours.
  leaves_of = [jax.tree_util.tree_leaves(m) for m in masks]
  taus = merging.task_vectors(base, tuned)

  def leaf_reference(i, b, *t):
    queue = [torch.from_numpy(np.asarray(leaves_of[j][i], np.float64)) for j in range(3)]
    monkeypatch.setattr(torch, 'bernoulli', lambda _: queue.pop(0))
    fn = merge_utils.dare_linear if merge == 'linear' else merge_utils.dare_ties
    tensors = [torch.from_numpy(np.asarray(x, np.float64)) for x in t]
    return np.asarray(b, np.float64) + fn(tensors, torch.tensor(w, dtype=torch.float64),
                                          density).numpy()
  base_leaves, treedef = jax.tree_util.tree_flatten(base)
  tau_leaves = [jax.tree_util.tree_leaves(t) for t in taus]
  want = [leaf_reference(i, b, *(tl[i] for tl in tau_leaves)) for i, b in enumerate(base_leaves)]
  _assert_trees_close(ours, jax.tree_util.tree_unflatten(treedef, want), rtol=1e-5, atol=1e-6)
  # About density of the entries survive.
  kept = np.mean(np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(masks)]))
  assert 0.25 < kept < 0.55


def test_slerp_against_float64_numpy(models):
  _, tuned = models
  a, b = tuned[0], tuned[1]
  out = merging.slerp(a, b, 0.25)
  x, y = np.asarray(a['layer']['kernel'], np.float64).ravel(), np.asarray(
      b['layer']['kernel'], np.float64).ravel()
  theta = np.arccos(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
  want = (np.sin(0.75 * theta) * x + np.sin(0.25 * theta) * y) / np.sin(theta)
  np.testing.assert_allclose(np.asarray(out['layer']['kernel']).ravel(), want, rtol=1e-5)
  _assert_trees_close(merging.slerp(a, b, 0.0), a, rtol=1e-6, atol=1e-7)
  _assert_trees_close(merging.slerp(a, b, 1.0), b, rtol=1e-6, atol=1e-7)
  # Orthogonal unit vectors stay on the unit circle halfway.
  e = merging.slerp({'v': jnp.array([1.0, 0.0])}, {'v': jnp.array([0.0, 1.0])}, 0.5)['v']
  np.testing.assert_allclose(np.asarray(e), [2 ** -0.5, 2 ** -0.5], rtol=1e-6)


def test_greedy_soup_keeps_only_models_that_do_not_hurt():
  good = {'w': jnp.array([1.0])}
  also_good = {'w': jnp.array([1.2])}
  bad = {'w': jnp.array([-5.0])}
  score = lambda p: -abs(float(p['w'][0]) - 1.1)  # noqa: E731
  soup, kept = merging.greedy_soup([bad, good, also_good], score)
  assert kept == [1, 2]  # best first (1.0 and 1.2 tie at 0.1 distance: input order), bad left out
  np.testing.assert_allclose(np.asarray(soup['w']), [1.1], rtol=1e-6)


def test_bad_input_is_refused(models):
  base, tuned = models
  with pytest.raises(ValueError, match='different params structure'):
    merging.uniform_soup([base, {'x': jnp.zeros(2)}])
  with pytest.raises(ValueError, match='2 weights for 3 models'):
    merging.task_arithmetic(base, tuned, [1.0, 2.0])
  with pytest.raises(ValueError, match='needs a PRNG key'):
    merging.dare(base, tuned, density=0.5)
  with pytest.raises(ValueError, match='t must be in'):
    merging.slerp(base, tuned[0], 1.5)


def _layered(rng, scale=1.0):
  return {f'layer_{i}': {'kernel': jnp.asarray(scale * rng.standard_normal((4, 3)), jnp.float32)}
          for i in range(2)} | {'embedding': jnp.asarray(scale * rng.standard_normal((5, 3)),
                                                          jnp.float32)}


@pytest.mark.parametrize('per_layer', [False, True])
def test_self_positioning_converges_to_the_model_the_probe_loss_prefers(per_layer):
  """The probe loss is the distance to model 1: the learned coefficients go to (0, 1, 0)."""
  rng = np.random.default_rng(3)
  base = _layered(rng)
  tuned = [jax.tree_util.tree_map(lambda b, d: b + d, base, _layered(rng, 0.5)) for _ in range(3)]
  target = tuned[1]

  def probe_loss(params, batch):
    sq = jax.tree_util.tree_map(lambda p, t: jnp.sum((p - t) ** 2), params, target)
    return batch * sum(jax.tree_util.tree_leaves(sq))

  merged, coefficients, history = merging.self_positioning(
      base, tuned, probe_loss, [jnp.float32(1.0)], per_layer=per_layer, steps=300,
      learning_rate=0.05)
  want = np.array([0.0, 1.0, 0.0])
  assert coefficients.shape == ((3, 3) if per_layer else (3,))  # 2 layers + the embedding row
  np.testing.assert_allclose(coefficients, np.broadcast_to(want, coefficients.shape), atol=2e-2)
  assert history[-1] < 1e-2 * history[0]
  _assert_trees_close(merged, target, atol=3e-2)


def _adapter(rng, rank):
  return {'layer_0': {'query': {'lora_a': jnp.asarray(rng.standard_normal((6, rank)), jnp.float32),
                                'lora_b': jnp.asarray(rng.standard_normal((rank, 5)), jnp.float32)}}}


def test_lora_adapters_merge_to_the_float64_sum_of_their_updates():
  from embedjax.models.lora import LoraConfig
  rng = np.random.default_rng(4)
  adapters = [_adapter(rng, 2), _adapter(rng, 3)]
  configs = [LoraConfig(rank=2, alpha=4.0), LoraConfig(rank=3, alpha=6.0)]
  w = [0.7, 0.3]
  a64 = [(np.asarray(x['layer_0']['query']['lora_a'], np.float64),
          np.asarray(x['layer_0']['query']['lora_b'], np.float64)) for x in adapters]
  delta = sum(wi * c.scale * a @ b for wi, c, (a, b) in zip(w, configs, a64))

  def product(adapter, config):
    m = adapter['layer_0']['query']
    return config.scale * np.asarray(m['lora_a'], np.float64) @ np.asarray(m['lora_b'], np.float64)

  cat, cfg = merging.merge_lora_adapters(adapters, configs, w, method='cat')
  assert cfg.rank == 5 and cfg.scale == 1.0
  np.testing.assert_allclose(product(cat, cfg), delta, rtol=1e-5, atol=1e-5)
  svd, cfg = merging.merge_lora_adapters(adapters, configs, w, method='svd', rank=2)
  u, s, vt = np.linalg.svd(delta)
  np.testing.assert_allclose(product(svd, cfg), (u[:, :2] * s[:2]) @ vt[:2], rtol=1e-5, atol=1e-5)
  same = [_adapter(rng, 2), _adapter(rng, 2)]
  w_lin = [0.7, -0.3]  # peft: the sign goes to A only, sqrt|w s| to both
  lin, cfg = merging.merge_lora_adapters(same, [configs[0]] * 2, w_lin, method='linear')
  v = [wi * configs[0].scale for wi in w_lin]
  ref_a = sum(np.sign(vi) * np.sqrt(abs(vi)) * np.asarray(x['layer_0']['query']['lora_a'], np.float64)
              for vi, x in zip(v, same))
  ref_b = sum(np.sqrt(abs(vi)) * np.asarray(x['layer_0']['query']['lora_b'], np.float64)
              for vi, x in zip(v, same))
  np.testing.assert_allclose(product(lin, cfg), ref_a @ ref_b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='equal ranks'):
    merging.merge_lora_adapters(adapters, configs, method='linear')
  with pytest.raises(ValueError, match='other modules'):
    merging.merge_lora_adapters([adapters[0], {'layer_1': adapters[1]['layer_0']}], configs)
