"""Run any embedjax model through MTEB (mteb 2.x), without embedjax importing mteb.

``MTEBEncoder`` satisfies mteb's ``EncoderProtocol`` by duck typing: it has ``encode(inputs, *,
task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs)``, ``similarity``,
``similarity_pairwise`` and a ``mteb_model_meta`` attribute, which is all that mteb's evaluators
call or check (``isinstance(model, EncoderProtocol)`` only looks for those names). So::

    import mteb, embedjax
    from embedjax.evals.mteb_encoder import MTEBEncoder
    enc = MTEBEncoder(embedjax.load('all-MiniLM-L6-v2'))
    enc.mteb_model_meta = mteb.models.ModelMeta.create_empty(overwrites=enc.meta_fields())
    mteb.evaluate(enc, mteb.get_tasks(tasks=['STSBenchmark']), cache=None)

Why each choice:
- Batching: mteb hands over a DataLoader of small batches (its ``batch_size``); embedjax's packed
  encoder is fastest when it sees all texts at once (it sorts them by length and packs several to a
  row). So ``encode`` collects every text of the DataLoader and makes one encoder call;
  ``rows_per_batch`` sets the device batch, mteb's ``batch_size`` is ignored.
- Prompts: chosen as mteb's own SentenceTransformerEncoderWrapper chooses them (``mteb.models.
  abs_encoder.get_prompt_name``): ``"{task name}-{prompt type}"``, then the task name, then
  ``"{task type}-{prompt type}"``, then the task type, then the prompt type (``query`` or
  ``document``); none of these keys -> no prompt. The prompt text is prepended to every text, as
  sentence-transformers does. Without ``prompts`` the model's own prompts (a sentence-transformers
  folder's ``config_sentence_transformers.json``) are used, as mteb does for a SentenceTransformer.
  The task metadata's own instruction (``TaskMetadata.prompt``) is not used: mteb's
  sentence-transformers wrapper does not use it either (only its instruction-model wrappers do).
- Similarity: the model's own similarity function ('cosine' unless the model says otherwise),
  computed on the host in float64 (``embedjax.models.similarity``), as sentence-transformers
  defines each one; mteb ranks retrieval results and computes STS's 'spearman' with it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

SIMILARITY_FUNCTIONS = ('cosine', 'dot', 'euclidean', 'manhattan')


def prompt_name(prompts: Mapping[str, str] | None, task_name: str | None, task_type: str | None,
                prompt_type: str | None) -> str | None:
  """The key of ``prompts`` to use for a task and prompt type, in mteb's order of priority.

  ``"{task_name}-{prompt_type}"`` > ``task_name`` > ``"{task_type}-{prompt_type}"`` > ``task_type``
  > ``prompt_type``; None when no key matches (or ``prompts`` is empty).
  """
  if not prompts:
    return None
  candidates = []
  if task_name and prompt_type:
    candidates.append(f'{task_name}-{prompt_type}')
  if task_name:
    candidates.append(task_name)
  if task_type and prompt_type:
    candidates.append(f'{task_type}-{prompt_type}')
  if task_type:
    candidates.append(task_type)
  if prompt_type:
    candidates.append(prompt_type)
  return next((c for c in candidates if c in prompts), None)


def similarity_matrix(a, b, fn: str = 'cosine') -> np.ndarray:
  """(N, M) float64 similarities of (N, D) and (M, D) embeddings (a (D,) vector counts as N = 1).

  'cosine', 'dot', 'euclidean' (negative L2 distance) or 'manhattan' (negative L1 distance), as
  sentence-transformers' ``SimilarityFunction`` defines them (``embedjax.models.similarity``).
  """
  from embedjax.models import similarity
  return similarity.get(fn)(_host(a), _host(b))


def similarity_pairs(a, b, fn: str = 'cosine') -> np.ndarray:
  """(N,) float64 similarities of matching rows of two (N, D) embedding arrays (see above)."""
  a, b = _host(a), _host(b)
  a, b = (a[None, :] if a.ndim == 1 else a), (b[None, :] if b.ndim == 1 else b)
  if a.shape != b.shape:
    raise ValueError(f'pairwise similarity needs equal shapes, got {a.shape} and {b.shape}')
  if fn == 'cosine':
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.sum(unit(a) * unit(b), axis=1)
  if fn == 'dot':
    return np.sum(a * b, axis=1)
  if fn == 'euclidean':
    return -np.linalg.norm(a - b, axis=1)
  if fn == 'manhattan':
    return -np.abs(a - b).sum(1)
  raise ValueError(f'unknown similarity function {fn!r}; choose from {SIMILARITY_FUNCTIONS}')


def _host(x) -> np.ndarray:
  # mteb hands back what encode returned (numpy) or torch tensors; np.asarray reads both (a CPU
  # tensor converts through __array__).
  return np.asarray(x, np.float64)


def _texts(inputs: Iterable[Mapping[str, Any]]) -> list[str]:
  """Every text of an mteb DataLoader (dict batches, 'text' a list of str), in order."""
  texts: list[str] = []
  for i, batch in enumerate(inputs):
    if 'text' not in batch:
      raise ValueError(f'MTEBEncoder encodes text only; batch {i} has the fields {sorted(batch)}')
    texts.extend(str(t) for t in batch['text'])
  return texts


class MTEBEncoder:
  """An embedjax model as an mteb encoder (mteb's ``EncoderProtocol``, by duck typing).

  Args:
    model: an object with ``.encode(texts, prompt=...)`` returning (N, D) embeddings (the model
      of ``embedjax.load``), or a ``Pretrained`` of ``embedjax.models.pretrained.load_pretrained``
      (encoded with ``embedjax.encoding.encode``).
    prompts: {key: prompt text}; keys as in mteb: task names, task types, 'query', 'document' and
      '<task name or type>-<query|document>'. None: the model's own ``prompts``, if any.
    rows_per_batch: rows per device call of the packed encoder.
    name: the model's name in mteb's results; default 'embedjax/<folder name of the model>'.
    model_meta: an ``mteb.models.ModelMeta`` (built by the caller, since embedjax does not import
      mteb; ``meta_fields()`` gives its fields). None: mteb fills in an empty one.
    similarity_fn: 'cosine', 'dot', 'euclidean' or 'manhattan'; None: the model's own
      ``similarity_fn``, else 'cosine'.
  """

  def __init__(self, model, *, prompts: Mapping[str, str] | None = None, rows_per_batch: int = 16,
               name: str | None = None, model_meta=None, similarity_fn: str | None = None):
    if rows_per_batch < 1:
      raise ValueError(f'rows_per_batch must be positive, got {rows_per_batch}')
    self.model = model
    self._pretrained = _is_pretrained(model)
    if not self._pretrained and not callable(getattr(model, 'encode', None)):
      raise TypeError(f'MTEBEncoder needs a model with an .encode(texts, prompt=...) method or a '
                      f'Pretrained, got {type(model).__name__}')
    own_prompts = getattr(model, 'prompts', None) or None
    self.model_prompts: dict[str, str] | None = (dict(prompts) if prompts is not None else
                                                 dict(own_prompts) if own_prompts else None)
    for key, text in (self.model_prompts or {}).items():
      if not isinstance(key, str) or not isinstance(text, str):
        raise TypeError(f'prompts must map str to str, got {key!r}: {text!r}')
    self.rows_per_batch = rows_per_batch
    self.similarity_fn = similarity_fn or getattr(model, 'similarity_fn', None) or 'cosine'
    if self.similarity_fn not in SIMILARITY_FUNCTIONS:
      raise ValueError(f'unknown similarity function {self.similarity_fn!r}; choose from '
                       f'{SIMILARITY_FUNCTIONS}')
    self.name = name or f'embedjax/{_model_name(model)}'
    self.mteb_model_meta = model_meta
    # (task name, prompt type) -> the prompt key used, so that a run can be checked afterwards.
    self.prompts_used: dict[tuple[str, str | None], str | None] = {}

  def __repr__(self) -> str:
    return (f'MTEBEncoder({self.name!r}, similarity={self.similarity_fn!r}, '
            f'prompts={sorted(self.model_prompts or {})})')

  # --- what mteb calls ---------------------------------------------------------------------------

  def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
             **kwargs) -> np.ndarray:
    """(N, D) float32 embeddings of every text of ``inputs`` (an mteb DataLoader), in order.

    ``kwargs`` are mteb's encode_kwargs: ``batch_size`` is ignored (the packed encoder picks its
    own batches), ``show_progress_bar`` turns the progress bar on, and a ``precision`` other than
    float32 is refused (the embeddings are float32).
    """
    precision = kwargs.get('precision')
    if precision not in (None, 'float32'):
      raise ValueError(f'MTEBEncoder returns float32 embeddings; precision={precision!r} is not '
                       'supported')
    kind = getattr(prompt_type, 'value', prompt_type)
    key = prompt_name(self.model_prompts, task_metadata.name, task_metadata.type, kind)
    self.prompts_used[(task_metadata.name, kind)] = key
    prompt = self.model_prompts[key] if key is not None else None
    return self.encode_texts(_texts(inputs), prompt=prompt,
                             progress=bool(kwargs.get('show_progress_bar', False)))

  def similarity(self, embeddings1, embeddings2) -> np.ndarray:
    """(N, M) float64 similarities with the model's similarity function."""
    return similarity_matrix(embeddings1, embeddings2, self.similarity_fn)

  def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
    """(N,) float64 similarities of matching rows."""
    return similarity_pairs(embeddings1, embeddings2, self.similarity_fn)

  # --- embedjax side -----------------------------------------------------------------------------

  def encode_texts(self, texts: list[str], *, prompt: str | None = None,
                   progress: bool = False) -> np.ndarray:
    """(N, D) float32 embeddings of ``texts`` with ``prompt`` prepended; one encoder call.

    ``prompt=None``: the model's default prompt if it names one (as sentence-transformers), else
    none.
    """
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    if self._pretrained:
      from embedjax.encoding import encode  # the packed encoder: sorts, packs, one pass
      default = getattr(self.model, 'default_prompt_name', None)
      if prompt is None and default:  # as sentence-transformers' encode without a prompt
        prompt = self.model.prompts[default]
      # mteb embeds an empty text too (sentence-transformers gives it [CLS] [SEP]); so do we.
      emb = encode(self.model, list(texts), prompt=prompt, rows_per_batch=self.rows_per_batch,
                   progress=progress, allow_empty=True)
    else:
      emb = self.model.encode(list(texts), prompt=prompt,
                              **_accepted(self.model.encode, rows_per_batch=self.rows_per_batch,
                                          progress=progress))
    emb = np.asarray(emb, np.float32)
    if emb.shape[0] != len(texts):
      raise ValueError(f'{self.name}: encode returned {emb.shape[0]} rows for {len(texts)} texts')
    return emb

  @property
  def dim(self) -> int | None:
    """The embedding width D (None when the model does not say)."""
    dim = getattr(getattr(self.model, 'spec', None), 'embedding_dim', None)
    dim = getattr(self.model, 'dim', None) if dim is None else dim
    return int(dim) if dim is not None else None

  def meta_fields(self, *, revision: str | None = None) -> dict[str, Any]:
    """Fields for ``mteb.models.ModelMeta.create_empty(overwrites=...)`` describing this model.

    ``revision`` defaults to 'embedjax-<version>' (mteb keys its result folders by name and
    revision).
    """
    from embedjax import __version__
    spec = getattr(self.model, 'spec', None)
    max_tokens = getattr(spec, 'max_seq_length', None) or getattr(self.model, 'max_seq_length',
                                                                   None)
    params = getattr(self.model, 'params', None)
    n_params = None
    if params is not None:
      import jax
      n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
    return {
        'name': self.name,
        'revision': revision or f'embedjax-{__version__}',
        'embed_dim': self.dim,
        'max_tokens': max_tokens,
        'n_parameters': n_params,
        'similarity_fn_name': self.similarity_fn,
        'framework': ['JAX'],
        'open_weights': True,
        'use_instructions': bool(self.model_prompts),
        'modalities': ['text'],
        'model_type': ['dense'],
    }


def _model_name(model) -> str:
  """The packaged name of the model's folder ('all-MiniLM-L6-v2'), else the folder's name."""
  own = getattr(model, 'name', None)
  if isinstance(own, str) and own:
    return Path(own).name
  source = getattr(model, 'source', None)
  if not source:
    return type(model).__name__
  from embedjax.models.pretrained import PACKAGED_MODELS, resolve_model_dir
  for packaged in PACKAGED_MODELS:
    try:
      if resolve_model_dir(packaged).resolve() == Path(source).resolve():
        return packaged
    except FileNotFoundError:  # that package is not installed
      continue
  return Path(source).name


def _is_pretrained(model) -> bool:
  from embedjax.models.pretrained import Pretrained
  return isinstance(model, Pretrained)


def _accepted(fn, **kwargs) -> dict[str, Any]:
  """The keyword arguments ``fn`` accepts (a model's encode may lack rows_per_batch/progress)."""
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return {}
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return kwargs
  return {k: v for k, v in kwargs.items() if k in params}
