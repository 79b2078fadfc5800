"""Choosing a loss in a config: its own arguments become fields, the step passes it only those
it takes, and the batch-derived arguments (hard negatives, scale, doc ids, scores) likewise."""

from __future__ import annotations

import pytest

from embedjax.config import ConfigError
from embedjax.losses import LOSSES, SCORED_LOSSES
from embedjax.train.base_config import base_config, check_config, loss_defaults, use_loss
from embedjax.train.loop import step_config
from embedjax.train.step import loss_arguments


def _with_loss(name: str, **fields):
  return use_loss(base_config(), name, **fields)


def test_a_loss_own_fields_are_accepted_and_passed():
  c = _with_loss('focal_info_nce', gamma=1.5)
  check_config(c)
  kwargs = dict(step_config(c, None).loss_kwargs)
  assert kwargs['gamma'] == 1.5 and 'scale' not in kwargs
  # info_nce takes no gamma: the field is unknown to a config that chose info_nce.
  c = base_config()
  c.loss.gamma = 1.5
  with pytest.raises(ConfigError, match="unknown config field 'loss.gamma'"):
    check_config(c)


def test_base_loss_fields_a_loss_does_not_take_must_keep_their_defaults():
  c = _with_loss('cosent')
  check_config(c)  # directions etc. at their defaults: fine, and not passed to cosent
  assert set(dict(step_config(c, None).loss_kwargs)) == {'similarity'}
  c.loss.directions = ('query_to_doc', 'doc_to_query')
  with pytest.raises(ConfigError, match="loss.directions: loss 'cosent' takes no 'directions'"):
    check_config(c)


def test_batch_arguments_of_each_loss():
  assert loss_arguments('info_nce') == {'hard_negatives', 'scale', 'doc_ids'}
  assert loss_arguments('cosent') == {'scale', 'scores'}
  assert loss_arguments('order_aware_sts') == {'scores'}
  assert loss_arguments('angle') == {'scale', 'scores', 'hard_negatives'}
  assert SCORED_LOSSES <= set(LOSSES)
  for name in SCORED_LOSSES:
    assert 'scores' in loss_arguments(name)
  for name in set(LOSSES) - SCORED_LOSSES:
    assert 'scores' not in loss_arguments(name)
  # No batch argument is a config field.
  for name in LOSSES:
    assert not {'scores', 'hard_negatives', 'doc_ids', 'mask', 'weights'} & set(loss_defaults(name))
