"""One object for a loaded embedding model: ``embedjax.load(name) -> EmbeddingModel``.

``EmbeddingModel`` is a small frozen record around a :class:`~embedjax.models.pretrained.Pretrained`
(spec, params pytree, tokenizer, and what sentence-transformers keeps beside the weights: the
prompts, the default prompt name and the similarity function). It adds no state: ``.params`` is
the same explicit pytree (pass it to a train step, replace it with :meth:`with_params`), and every
method is a function of the record and its arguments::

  import embedjax
  model = embedjax.load('all-MiniLM-L6-v2')
  emb = model.encode(['A man is playing a guitar.', 'Someone plays an instrument.'])  # (2, 384)
  model.similarity(emb, emb)         # (2, 2), with the model's similarity function
  model.save('runs/my_model')        # a sentence-transformers folder

The methods follow ``sentence_transformers.SentenceTransformer``'s: ``encode`` prepends the prompt
to every text (prompt + text), ``similarity`` is the model's ``similarity_fn_name`` function, and
``save`` writes a folder that both ``embedjax.load`` and ``SentenceTransformer`` load.
"""

from __future__ import annotations

import dataclasses
import os
import types
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from embedjax import encoding
from embedjax.models import pretrained, similarity as similarity_lib
from embedjax.models.pretrained import Pretrained


@dataclasses.dataclass(frozen=True, eq=False)
class EmbeddingModel:
  """A loaded model: a ``Pretrained`` (spec, params pytree, tokenizer, prompts, similarity
  function) and the name it was loaded by. Frozen: :meth:`replace` makes a changed copy.

  Attributes:
    pretrained: everything the model is; its fields are also readable here (``.params``,
      ``.spec``, ``.tokenizer``, ``.prompts``, ``.default_prompt_name``, ``.similarity_fn``).
    name: how the model was named when loaded (a packaged name or a folder).
  """
  pretrained: Pretrained
  name: str = ''

  def __post_init__(self):
    similarity_lib.get(self.similarity_fn)  # a one-line error naming the choices
    if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
      raise ValueError(f'default_prompt_name {self.default_prompt_name!r} is not one of the '
                       f'prompts {sorted(self.prompts)}')

  def replace(self, **changes) -> EmbeddingModel:
    """A copy with some fields of ``pretrained`` replaced, e.g. ``replace(params=new_params)``
    or ``replace(prompts={'query': 'query: '}, default_prompt_name='query')``; nothing is copied
    that is not replaced."""
    return dataclasses.replace(self, pretrained=dataclasses.replace(self.pretrained, **changes))

  # --- what the model is ---------------------------------------------------------------------

  @property
  def params(self) -> Any:
    """The params pytree (float32 numpy or jax arrays)."""
    return self.pretrained.params

  @property
  def spec(self):
    """The :class:`~embedjax.models.spec.EmbedderSpec` (architecture, pooling, normalisation)."""
    return self.pretrained.spec

  @property
  def tokenizer(self):
    return self.pretrained.tokenizer

  @property
  def prompts(self) -> Mapping[str, str]:
    """{prompt name: text prepended to every input}, e.g. {'query': 'query: '} (read-only)."""
    return types.MappingProxyType(self.pretrained.prompts)

  @property
  def default_prompt_name(self) -> str | None:
    """The prompt ``encode`` uses when given neither prompt nor prompt_name."""
    return self.pretrained.default_prompt_name

  @property
  def similarity_fn(self) -> str:
    """'cosine', 'dot', 'euclidean' or 'manhattan': what :meth:`similarity` computes."""
    return self.pretrained.similarity_fn

  @property
  def source(self) -> str:
    """The folder the weights were read from."""
    return self.pretrained.source

  @property
  def dim(self) -> int:
    """Width D of the embeddings."""
    return int(self.spec.embedding_dim)

  @property
  def max_seq_length(self) -> int:
    """Tokens per text (special tokens included); longer texts are truncated."""
    return int(self.spec.max_seq_length)

  @property
  def normalize(self) -> bool:
    """Whether ``encode`` L2-normalises by default."""
    return bool(self.spec.normalize)

  @property
  def num_params(self) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params)))

  def __repr__(self) -> str:
    name = self.name or Path(self.source).name
    return (f'EmbeddingModel({name!r}, params={self.num_params / 1e6:.1f}M, dim={self.dim}, '
            f'max_seq_length={self.max_seq_length}, pooling={self.spec.pooling!r}, '
            f'normalize={self.normalize}, similarity={self.similarity_fn!r}'
            + (f', prompts={sorted(self.prompts)}' if self.prompts else '') + ')')

  def with_params(self, params) -> EmbeddingModel:
    """The same model with other params (e.g. a training state's)."""
    return self.replace(params=params)

  # --- using it ------------------------------------------------------------------------------

  def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str:
    """The text prepended to every input, chosen as sentence-transformers chooses it.

    ``prompt`` as given (``''`` means none, overriding the default); else ``prompts[prompt_name]``;
    else the default prompt; else ``''``.
    """
    if prompt is not None and prompt_name is not None:
      raise ValueError(f'give prompt or prompt_name, not both (got prompt={prompt!r}, '
                       f'prompt_name={prompt_name!r})')
    if prompt is not None:
      return prompt
    if prompt_name is not None:
      if prompt_name not in self.prompts:
        known = ', '.join(self.prompts) or 'none'
        raise ValueError(f'unknown prompt_name {prompt_name!r}; this model\'s prompts: {known}')
      return self.prompts[prompt_name]
    if self.default_prompt_name is not None:
      return self.prompts[self.default_prompt_name]
    return ''

  def encode(self, texts: str | Sequence[str], *, prompt: str | None = None,
             prompt_name: str | None = None, normalize: bool | None = None,
             rows_per_batch: int = 16, progress: bool = False) -> np.ndarray:
    """Embeds texts: a list of N strings -> (N, D) float32; one string -> (D,).

    Args:
      texts: a string or a sequence of strings (an empty sequence gives (0, D); an empty string
        is embedded as sentence-transformers embeds it, [CLS] [SEP]).
      prompt: text prepended to every input (prompt + text); '' for none.
      prompt_name: a key of ``self.prompts`` instead of ``prompt``.
      normalize: None: the model's own setting (``self.normalize``); True / False: L2-normalise or
        not, whatever the model does (unlike sentence-transformers' ``normalize_embeddings=False``,
        which keeps a Normalize module's normalisation).
      rows_per_batch: packed rows per device call (see ``embedjax.encoding.encode``).
      progress: show a progress bar.
    """
    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    for i, t in enumerate(batch):
      if not isinstance(t, str):
        raise TypeError(f'texts[{i}] is a {type(t).__name__}, not a str')
    text = self.resolve_prompt(prompt, prompt_name)
    if not batch:
      return np.zeros((0, self.dim), np.float32)
    model = self.pretrained
    if normalize is not None and bool(normalize) != self.normalize:
      model = dataclasses.replace(model, spec=dataclasses.replace(model.spec,
                                                                  normalize=bool(normalize)))
    # encoding.encode prepends the prompt, and leaves its tokens out of pooling when the model's
    # Pooling has include_prompt=False, as sentence-transformers does.
    emb = encoding.encode(model, batch, prompt=text or None, rows_per_batch=rows_per_batch,
                          progress=progress, allow_empty=True)
    return emb[0] if single else emb

  def similarity(self, a, b) -> np.ndarray:
    """(N, D), (M, D) embeddings -> (N, M) float64 scores of ``self.similarity_fn``.

    As ``SentenceTransformer.similarity``: 'cosine', 'dot', 'euclidean' (negative L2 distance)
    or 'manhattan' (negative L1 distance); a (D,) vector counts as one row.
    """
    return similarity_lib.get(self.similarity_fn)(a, b)

  def save(self, folder: str | os.PathLike) -> Path:
    """Writes a sentence-transformers folder (atomically), loadable by ``embedjax.load`` and by
    ``sentence_transformers.SentenceTransformer``; returns its path."""
    return pretrained.export_sentence_transformers(folder, self.pretrained)


def load(name_or_folder: str | os.PathLike, *, dtype: str = 'float32') -> EmbeddingModel:
  """Loads a model: a packaged name ('all-MiniLM-L6-v2') or a local Hugging Face /
  sentence-transformers folder. Nothing is downloaded.

  Args:
    name_or_folder: packaged model name or folder path.
    dtype: compute dtype of the encoder ('float32' or 'bfloat16'); params stay float32.
  """
  return EmbeddingModel(pretrained.load_pretrained(name_or_folder, dtype=dtype),
                        name=str(name_or_folder))
