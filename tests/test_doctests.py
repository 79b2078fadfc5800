"""Runs the docstring examples of every loss, quantizer and shared array op (optax's habit).

Every module of ``embedjax.losses`` and ``embedjax.quant``, and ``embedjax.ops``, is run through
``doctest``; any failing example fails its module's test. ``REQUIRED`` names the public losses and
quantizers that must carry an example, so that a deleted or renamed example cannot let the test
pass with nothing run.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import embedjax.losses
import embedjax.quant

# module -> objects whose docstring must hold at least one example ('' = the module docstring,
# for quantizers that are module-level records rather than functions).
REQUIRED = {
    'embedjax.ops': ['l2_normalize', 'pack_bits', 'as_uint8', 'unpack_signs', 'bytes_to_words'],
    'embedjax.losses': ['embedding_mse'],
    'embedjax.losses.contrastive': ['info_nce', 'cosine_matrix'],
    'embedjax.losses.matryoshka': ['matryoshka', 'truncate_and_renormalize'],
    'embedjax.losses.pairwise': ['cosent', 'angle', 'triplet', 'contrastive_loss', 'online_contrastive',
                                 'pair_cosine', 'pair_angle'],
    'embedjax.losses.distill': ['margin_mse', 'distill_kl_div', 'mse'],
    'embedjax.losses.gist': ['gist', 'cached_gist'],
    'embedjax.losses.elastic': ['adaptive_layer', 'matryoshka_2d', 'layer_weight'],
    'embedjax.losses.mixing': ['mix_negatives', 'mix_hard_negatives'],
    'embedjax.losses.weighted': ['candidates', 'hardness_weighted_info_nce', 'focal_info_nce',
                                 'progressive_weights', 'progressive_info_nce'],
    'embedjax.losses.multi_positive': ['multi_positive_info_nce', 'average_ranks', 'pro_loss',
                                       'pearson_loss', 'rank_kl_loss', 'cosent_loss',
                                       'order_aware_sts_loss'],
    'embedjax.quant.scalar': ['cast', 'uniform_fit'],
    'embedjax.quant.binary': ['', 'popcount_hamming'],
    'embedjax.quant.pq': ['product_quantizer'],
    'embedjax.quant.learned': ['recurrent_binarizer', 'fake_quant'],
    'embedjax.quant.reduce': ['truncate', 'pca', 'gaussian', 'sparse'],
    'embedjax.quant.compose': ['compose'],
}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
  names = ['embedjax.ops']
  for package in (embedjax.losses, embedjax.quant):
    names.append(package.__name__)
    names += [f'{package.__name__}.{m.name}' for m in pkgutil.iter_modules(package.__path__)]
  return names


def test_every_required_module_is_collected():
  assert set(REQUIRED) <= set(_module_names())


@pytest.mark.parametrize('name', _module_names())
def test_docstring_examples(name):
  module = importlib.import_module(name)
  tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
  examples = {t.name[len(name):].lstrip('.'): len(t.examples) for t in tests}
  for obj in REQUIRED.get(name, []):
    assert obj == '' or callable(getattr(module, obj, None)), f'{name}.{obj} is not public'
  missing = [obj or '<module docstring>' for obj in REQUIRED.get(name, []) if not examples.get(obj)]
  assert not missing, f'{name}: no docstring example in {missing}'
  runner = doctest.DocTestRunner(optionflags=OPTIONS)
  failed = [t.name for t in tests if runner.run(t).failed]
  assert not failed, f'failing examples (output above): {failed}'
