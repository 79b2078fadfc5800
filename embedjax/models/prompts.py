"""Text-side prompts for decoder embedders: PromptEOL, query instructions, instruction-free pooling.

* PromptEOL (Jiang et al. 2023, "Scaling Sentence Embeddings with Large Language Models"): wrap the
  text in ``This sentence : "{text}" means in one word:"`` and take the last token's state. The
  template is the one of the paper's repository (kongds/scaling_sentemb, ``train_llm.sh`` /
  ``evaluation.py``: ``This_sentence_:_"*sent_0*"_means_in_one_word:"`` with ``_`` read as a space;
  note the space before the colon and the opening quote at the end). Its pooling is
  ``pool_segments(..., 'last_token')``, which takes the last attended token for right- and
  left-padded rows alike; no new pooling code is needed.
* Query instructions: ``Instruct: {task}\\nQuery: {query}`` (E5-mistral, NV-Embed; Qwen3-Embedding's
  model card writes ``Query:{query}`` without the space, ``QWEN3_QUERY_TEMPLATE``). Documents are
  embedded without an instruction.
* NV-Embed leaves the instruction's tokens out of the mean pooling (``is_mask_instruction``):
  ``instruction_pool_mask`` builds that pool mask from the attention mask and the instruction's
  token count, for right- or left-padded rows; ``instruction_pool_mask_segments`` for packed rows.
* ``PromptConfig``: the templates, per-task instructions and the exclusion flag of a config.

Masks follow ``embedjax.ops.l2_normalize``'s convention: numpy in, numpy out (the host data
pipeline); anything else goes through jax.numpy (inside jit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
QUERY_TEMPLATE = 'Instruct: {task}\nQuery: {query}'        # E5-mistral, NV-Embed
QWEN3_QUERY_TEMPLATE = 'Instruct: {task}\nQuery:{query}'   # Qwen3-Embedding's model card
DOCUMENT_TEMPLATE = '{document}'


def prompteol(text: str, template: str = PROMPTEOL_TEMPLATE, *, clean_text: bool = False) -> str:
  """The PromptEOL prompt of one text.

  ``clean_text`` applies the sentence clean-up of the reference's SentEval evaluation
  (``evaluation.py``): end the text with '.' unless it ends in . ? " or ', turn double quotes into
  single quotes (they would close the template's quote), and a final '?' into '.'. Its training
  script (``ft_llm.py``) fills the template without it, hence off by default.
  """
  if clean_text:
    if text and text[-1] not in '.?"\'':
      text += '.'
    text = text.replace('"', '\'')
    if text.endswith('?'):
      text = text[:-1] + '.'
  # str.replace, not str.format: the text may contain braces.
  return template.replace('{text}', text)


def instruct_query(task: str, query: str, template: str = QUERY_TEMPLATE) -> str:
  """A query with its task instruction: ``Instruct: {task}\\nQuery: {query}`` by default."""
  return template.format(task=task, query=query)


def _xp(x):
  return np if isinstance(x, np.ndarray) else jnp


def instruction_pool_mask(attention_mask, instruction_lengths):
  """The pool mask that leaves each row's first ``instruction_lengths`` real tokens out.

  Args:
    attention_mask: (B, L) 0/1, right- or left-padded (any layout in which a row's real tokens are
      its 1s in order: the instruction is counted from the row's first 1).
    instruction_lengths: int or (B,) ints, the number of leading real tokens to exclude. NV-Embed
      passes ``len(tokenizer.tokenize(instruction))``, which does not count the BOS token the
      tokenizer adds, so its mask drops BOS and all but the last instruction token; add 1 to drop
      exactly BOS + instruction.
  Returns:
    (B, L) int32, 1 for tokens that are attended to and pooled.
  """
  xp = _xp(attention_mask)
  mask = xp.asarray(attention_mask).astype(xp.int32)
  if mask.ndim != 2:
    raise ValueError(f'attention_mask must be (B, L), got shape {mask.shape}')
  lengths = xp.asarray(instruction_lengths).astype(xp.int32)
  if lengths.ndim == 0:
    lengths = xp.broadcast_to(lengths, mask.shape[:1])
  # Index of each real token among its row's real tokens (padding on either side is skipped).
  rank = xp.cumsum(mask, axis=1) - 1
  return mask * (rank >= lengths[:, None]).astype(xp.int32)


def instruction_pool_mask_segments(segment_ids, instruction_lengths):
  """``instruction_pool_mask`` for packed rows.

  Args:
    segment_ids: (B, L) int, 1..S per text, 0 for padding; each text's tokens contiguous (as
      ``pool_segments`` requires).
    instruction_lengths: int, or (B, S) ints (one per segment slot; empty slots are ignored).
  Returns:
    (B, L) int32 pool mask for ``pool_segments`` / ``latent_attention_pool_segments``.
  """
  xp = _xp(segment_ids)
  segment_ids = xp.asarray(segment_ids).astype(xp.int32)
  if segment_ids.ndim != 2:
    raise ValueError(f'segment_ids must be (B, L), got shape {segment_ids.shape}')
  lengths = xp.asarray(instruction_lengths).astype(xp.int32)
  index = xp.broadcast_to(xp.arange(segment_ids.shape[1], dtype=xp.int32), segment_ids.shape)
  # Position within a text: distance to the last place where the segment id changed.
  changed = xp.concatenate([xp.ones_like(segment_ids[:, :1], dtype=bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start = _cummax(xp.where(changed, index, 0), xp)
  position = index - start
  if lengths.ndim == 0:
    own_length = lengths
  elif lengths.ndim == 2 and lengths.shape[0] == segment_ids.shape[0]:
    slot = xp.clip(segment_ids - 1, 0, lengths.shape[1] - 1)
    own_length = xp.take_along_axis(lengths, slot, axis=1)
  else:
    raise ValueError(f'instruction_lengths must be an int or (B, S), got shape {lengths.shape}')
  return ((segment_ids > 0) & (position >= own_length)).astype(xp.int32)


def _cummax(x, xp):
  if xp is np:
    return np.maximum.accumulate(x, axis=1)
  return jax.lax.cummax(x, axis=1)


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How a decoder embedder's queries and documents are written.

  Templates are ``str.format`` strings: the query template takes ``{task}`` (the task's
  instruction text, from ``instructions``) and ``{query}``; the document template takes
  ``{document}``. ``{text}`` is accepted in both as a synonym of the text (so
  ``PROMPTEOL_TEMPLATE`` can be used as is).

  Attributes:
    query_template: e.g. ``QUERY_TEMPLATE``; ``'{query}'`` for no instruction.
    document_template: e.g. ``'{document}'`` (NV-Embed, E5, Qwen3: documents bare).
    instructions: task name -> instruction text.
    exclude_instruction_from_pooling: pool without the instruction's tokens (NV-Embed). The caller
      counts ``query_prefix(task)``'s tokens and builds ``instruction_pool_mask``.
  """
  query_template: str = '{query}'
  document_template: str = DOCUMENT_TEMPLATE
  instructions: Mapping[str, str] = dataclasses.field(default_factory=dict)
  exclude_instruction_from_pooling: bool = False

  @classmethod
  def from_dict(cls, config: Mapping[str, Any] | Any) -> PromptConfig:
    """From a mapping or an ml_collections ConfigDict; unknown keys are an error naming them."""
    if hasattr(config, 'to_dict'):
      config = config.to_dict()
    config = dict(config)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise ValueError(f'unknown prompt config keys {unknown}; expected some of {sorted(fields)}')
    if 'instructions' in config:
      config['instructions'] = {str(k): str(v) for k, v in dict(config['instructions']).items()}
    return cls(**config)

  def to_dict(self) -> dict[str, Any]:
    return {'query_template': self.query_template, 'document_template': self.document_template,
            'instructions': dict(self.instructions),
            'exclude_instruction_from_pooling': self.exclude_instruction_from_pooling}

  def _instruction(self, task: str | None) -> str:
    if '{task}' not in self.query_template:
      return ''
    if task is None or task not in self.instructions:
      raise KeyError(f'no instruction for task {task!r}; the prompt config has '
                     f'{sorted(self.instructions)}')
    return self.instructions[task]

  def format_query(self, query: str, task: str | None = None) -> str:
    """The query as the model reads it (``task`` may be None when the template has no {task})."""
    return self.query_template.format(task=self._instruction(task), query=query, text=query)

  def format_document(self, document: str) -> str:
    return self.document_template.format(document=document, text=document)

  def query_prefix(self, task: str | None = None) -> str:
    """The query's text before the query itself: what ``exclude_instruction_from_pooling`` drops.

    Its token count (as NV-Embed, tokenized on its own) is the ``instruction_lengths`` of
    ``instruction_pool_mask``. A BPE tokenizer may merge across the boundary, so the count can be
    off by one; the reference has the same approximation.
    """
    marker = '\x00'
    full = self.query_template.format(task=self._instruction(task), query=marker, text=marker)
    return full[:full.index(marker)]
