"""PromptEOL / instruction prompts, last-token pooling and instruction-free pool masks vs numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.pooling import pool, pool_segments
from embedjax.models.prompts import (
  PROMPTEOL_TEMPLATE,
  QUERY_TEMPLATE,
  QWEN3_QUERY_TEMPLATE,
  PromptConfig,
  instruct_query,
  instruction_pool_mask,
  instruction_pool_mask_segments,
  prompteol,
)


def test_prompteol_exact_strings():
  # kongds/scaling_sentemb's train_llm.sh: 'This_sentence_:_"*sent_0*"_means_in_one_word:"'.
  assert PROMPTEOL_TEMPLATE == 'This sentence : "{text}" means in one word:"'
  assert prompteol('A kid is skateboarding.') == (
      'This sentence : "A kid is skateboarding." means in one word:"')
  assert prompteol('set {x} of {y}') == 'This sentence : "set {x} of {y}" means in one word:"'
  # The evaluation script's clean-up, in its order: a final period unless the text ends in
  # . ? " or ', then " -> ', then a final ? -> .
  assert prompteol('A kid on a board', clean_text=True) == (
      'This sentence : "A kid on a board." means in one word:"')
  assert prompteol('A kid on a "board"', clean_text=True) == (
      'This sentence : "A kid on a \'board\'" means in one word:"')
  assert prompteol('Is it raining?', clean_text=True) == (
      'This sentence : "Is it raining." means in one word:"')
  assert prompteol('', clean_text=True) == 'This sentence : "" means in one word:"'


def test_instruct_query_exact_strings():
  task = 'Given a web search query, retrieve relevant passages that answer the query'
  assert instruct_query(task, 'what is jax?') == (
      'Instruct: Given a web search query, retrieve relevant passages that answer the query\n'
      'Query: what is jax?')
  assert QUERY_TEMPLATE == 'Instruct: {task}\nQuery: {query}'
  assert instruct_query('t', 'q {0}', QWEN3_QUERY_TEMPLATE) == 'Instruct: t\nQuery:q {0}'


# ---------------------------------------------------------------- last-token pooling (PromptEOL)

def _np_last_token(hidden, mask):
  out = np.zeros((hidden.shape[0], hidden.shape[2]))
  for b in range(hidden.shape[0]):
    real = np.flatnonzero(mask[b])
    if len(real):
      out[b] = hidden[b, real[-1]]
  return out


@pytest.mark.parametrize('side', ['right', 'left'])
def test_last_token_pooling_right_and_left_padding(side):
  rng = np.random.default_rng(0 if side == 'right' else 1)
  lengths = [7, 3, 1, 5]
  hidden = rng.normal(size=(4, 7, 6)).astype(np.float32)
  mask = np.zeros((4, 7), np.int32)
  for b, n in enumerate(lengths):
    if side == 'right':
      mask[b, :n] = 1
    else:
      mask[b, 7 - n:] = 1
  ref = _np_last_token(hidden.astype(np.float64), mask)
  ours = pool(jnp.asarray(hidden), jnp.asarray(mask), 'last_token')
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours, np.float64), ref, atol=1e-6)
  if side == 'left':
    # Left padding: the last token is the final column, what PromptEOL's `[:, -1, :]` takes.
    np.testing.assert_array_equal(np.asarray(ours), hidden[:, -1])


def test_last_token_pooling_packed():
  rng = np.random.default_rng(2)
  hidden = rng.normal(size=(2, 8, 5)).astype(np.float32)
  seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 2]], np.int32)
  ours = np.asarray(pool_segments(hidden, seg, 3, 'last_token'))
  for b in range(2):
    for s in range(3):
      idx = np.flatnonzero(seg[b] == s + 1)
      want = hidden[b, idx[-1]] if len(idx) else np.zeros(5)
      np.testing.assert_allclose(ours[b, s], want, atol=1e-6)


# ---------------------------------------------------------------- instruction pool masks

def _np_instruction_mask(mask, lengths):
  out = np.zeros_like(mask)
  for b in range(mask.shape[0]):
    real = np.flatnonzero(mask[b])
    out[b, real[lengths[b]:]] = 1
  return out


@pytest.mark.parametrize('side', ['right', 'left'])
def test_instruction_pool_mask(side):
  rng = np.random.default_rng(3)
  b, l = 6, 9
  lengths = rng.integers(1, l + 1, size=b)
  mask = np.zeros((b, l), np.int32)
  for i, n in enumerate(lengths):
    if side == 'right':
      mask[i, :n] = 1
    else:
      mask[i, l - n:] = 1
  instr = np.array([0, 1, 2, 3, 9, 4])      # 9: longer than any row -> nothing pooled
  want = _np_instruction_mask(mask, instr)
  got = instruction_pool_mask(mask, instr)
  assert isinstance(got, np.ndarray) and got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  # jax arrays go through jax.numpy, also under jit; a scalar length applies to every row.
  got_jax = jax.jit(instruction_pool_mask)(jnp.asarray(mask), jnp.asarray(instr))
  np.testing.assert_array_equal(np.asarray(got_jax), want)
  np.testing.assert_array_equal(instruction_pool_mask(mask, 2),
                                _np_instruction_mask(mask, np.full(b, 2)))


def test_instruction_pool_mask_matches_nvembed_right_padding():
  # NV-Embed (right padding): pool_mask = attention_mask.clone(); pool_mask[:, :n] = 0.
  mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], np.int32)
  want = mask.copy()
  want[:, :2] = 0
  np.testing.assert_array_equal(instruction_pool_mask(mask, 2), want)


def test_instruction_pool_mask_segments():
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0],
                  [1, 1, 2, 2, 2, 2, 2, 2, 0, 0]], np.int32)
  lengths = np.array([[1, 2, 0], [0, 3, 5]])
  want = np.zeros_like(seg)
  for b in range(2):
    for s in range(3):
      idx = np.flatnonzero(seg[b] == s + 1)
      want[b, idx[lengths[b, s]:]] = 1
  np.testing.assert_array_equal(instruction_pool_mask_segments(seg, lengths), want)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(instruction_pool_mask_segments)(jnp.asarray(seg), jnp.asarray(lengths))),
      want)
  # One length for all texts; a single text per row is the padded function.
  want1 = np.zeros_like(seg)
  for b in range(2):
    for s in range(3):
      want1[b, np.flatnonzero(seg[b] == s + 1)[1:]] = 1
  np.testing.assert_array_equal(instruction_pool_mask_segments(seg, 1), want1)
  mask = (seg > 0).astype(np.int32)
  np.testing.assert_array_equal(instruction_pool_mask_segments(mask, 3),
                                instruction_pool_mask(mask, 3))


# ---------------------------------------------------------------- PromptConfig

def test_prompt_config():
  cfg = PromptConfig.from_dict({
      'query_template': QUERY_TEMPLATE,
      'instructions': {'nq': 'Given a question, retrieve passages that answer it'},
      'exclude_instruction_from_pooling': True})
  assert cfg.format_query('who?', 'nq') == (
      'Instruct: Given a question, retrieve passages that answer it\nQuery: who?')
  assert cfg.format_document('A doc {x}.') == 'A doc {x}.'
  prefix = cfg.query_prefix('nq')
  assert prefix == 'Instruct: Given a question, retrieve passages that answer it\nQuery: '
  assert cfg.format_query('who?', 'nq') == prefix + 'who?'
  assert PromptConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(KeyError, match='nq'):
    cfg.format_query('who?', 'msmarco')
  with pytest.raises(ValueError, match='querry_template'):
    PromptConfig.from_dict({'querry_template': '{query}'})

  # No instruction: queries unchanged; PromptEOL for both sides via {text}.
  assert PromptConfig().format_query('q') == 'q' and PromptConfig().query_prefix() == ''
  eol = PromptConfig(query_template=PROMPTEOL_TEMPLATE, document_template=PROMPTEOL_TEMPLATE)
  assert eol.format_query('A b.') == prompteol('A b.') == eol.format_document('A b.')
  assert eol.query_prefix() == 'This sentence : "'


def test_prompt_config_from_config_dict():
  ml_collections = pytest.importorskip('ml_collections')
  c = ml_collections.ConfigDict()
  c.query_template = QUERY_TEMPLATE
  c.instructions = {'sts': 'Retrieve semantically similar text'}
  cfg = PromptConfig.from_dict(c)
  assert cfg.instructions == {'sts': 'Retrieve semantically similar text'}
  assert not cfg.exclude_instruction_from_pooling
  assert cfg.format_query('x', 'sts') == 'Instruct: Retrieve semantically similar text\nQuery: x'
