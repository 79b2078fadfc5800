"""Free-embedding optimisation: can *any* d-dimensional vectors realise a qrel matrix?

The LIMIT paper (Weller et al., 2025) bounds the number of top-k sets a single-vector retriever
can return by the embedding dimension, and measures the bound empirically with "free" embeddings:
query and document vectors are optimised directly on the test qrels (no model, no text), so any
failure is a failure of the dimension, not of a model. For k = 2 and n documents the queries are
all C(n, 2) pairs; the largest n that can still be solved in d dimensions is the *critical-n*.

Protocol (the paper's, details that it leaves open are fields of ``Protocol``):
  * unit-normalised query vectors (M, d) and document vectors (n, d), random normal init, each
    restart from its own key;
  * Adam on the full-batch InfoNCE loss: for every (query, relevant doc) pair, the softmax over
    that document and all of the query's *non-relevant* documents (every document is a negative,
    the other relevant ones excepted), scores = cosine / temperature, mean over pairs;
  * vectors are re-normalised after every update (the paper normalises after updates);
  * success: every query ranks each relevant document strictly above every non-relevant one
    (``min relevant score > max non-relevant score``), checked every ``check_every`` steps;
  * early stopping after ``patience`` steps without progress, or at ``max_steps``. Progress is,
    by default (``stop_on='violations'``), fewer queries violating the criterion than ever before;
    ``stop_on='loss'`` is the paper's rule (a loss improvement, here of more than ``min_delta``
    relative). Near the critical n the loss keeps creeping down for tens of thousands of steps
    while the number of unsolved queries has long stopped falling, so the loss rule spends most of
    a sweep's time on attempts that will fail; the violation rule stops them.

Restarts run in one jitted ``while_loop``; the loop ends as soon as one restart succeeds, or when
all have stopped improving. Nothing is global: every function takes its PRNG key and returns
arrays. How the restarts' steps are laid out on the
device (``Execution``) is separate from the protocol: the maths is the same, only speed differs.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedjax.ops import l2_normalize


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Optimisation protocol of one free-embedding attempt (all hashable: a static jit argument)."""

  learning_rate: float = 0.01
  temperature: float = 0.1      # cosine / temperature are the InfoNCE logits
  patience: int = 1000          # steps without progress (see stop_on) before a restart gives up
  stop_on: str = 'violations'   # progress = fewer violated queries ('violations') or 'loss'
  min_delta: float = 1e-4       # relative loss improvement that counts as progress ('loss')
  max_steps: int = 20_000
  check_every: int = 50         # steps between success / patience checks (one jitted chunk)
  restarts: int = 4             # independent random initialisations, vmapped

  def __post_init__(self):
    for name in ('patience', 'max_steps', 'check_every', 'restarts'):
      if getattr(self, name) < 1:
        raise ValueError(f'Protocol.{name} must be >= 1, got {getattr(self, name)}')
    if self.stop_on not in ('violations', 'loss'):
      raise ValueError(f"Protocol.stop_on must be 'violations' or 'loss', got {self.stop_on!r}")
    if self.learning_rate <= 0 or self.temperature <= 0:
      raise ValueError('Protocol.learning_rate and Protocol.temperature must be > 0')


def all_pairs_qrels(n: int) -> np.ndarray:
  """(C(n, 2), n) bool: query i is relevant to exactly the two documents of the i-th pair.

  Pairs are in lexicographic order, ``(0, 1), (0, 2), ..., (n-2, n-1)``.
  """
  if n < 2:
    raise ValueError(f'all_pairs_qrels needs n >= 2 documents, got {n}')
  pairs = np.array(list(itertools.combinations(range(n), 2)), dtype=np.int64)
  rel = np.zeros((len(pairs), n), dtype=bool)
  rel[np.arange(len(pairs))[:, None], pairs] = True
  return rel


def scores(queries: jax.Array, docs: jax.Array) -> jax.Array:
  """(M, n) query-document scores: cosine for single-vector documents, MaxSim for multi-vector.

  Args:
    queries: (M, d) unit vectors.
    docs: (n, d) unit vectors, or (n, m, d): m unit vectors per document, scored by MaxSim
      (``max_b <q, d_b>``, ColBERT's late interaction with a one-vector query), which stays in
      [-1, 1] like a cosine so that the temperature means the same for every m.
  """
  if docs.ndim == 2:
    return queries @ docs.T
  return jnp.max(jnp.einsum('qd,nmd->qnm', queries, docs), axis=-1)


def infonce_loss(queries: jax.Array, docs: jax.Array, rel: jax.Array, temperature: float
                 ) -> jax.Array:
  """Mean InfoNCE over (query, relevant doc) pairs, negatives = the query's non-relevant docs.

  Args:
    queries: (M, d) unit vectors.
    docs: (n, d) unit vectors, or (n, m, d) multi-vector documents (see ``scores``).
    rel: (M, n) bool qrels.
    temperature: logits are ``scores(queries, docs) / temperature``.

  Returns:
    Scalar. For a pair (q, p): ``log(exp(s_qp) + sum_{j not rel} exp(s_qj)) - s_qp``
    = ``softplus(lse_neg_q - s_qp)``.
  """
  s = scores(queries, docs) / temperature
  lse_neg = jax.nn.logsumexp(jnp.where(rel, -jnp.inf, s), axis=1, keepdims=True)
  # A query relevant to every document has no negatives: lse_neg = -inf, softplus(-inf) = 0.
  per_pair = jax.nn.softplus(lse_neg - s)
  return jnp.sum(jnp.where(rel, per_pair, 0.0)) / jnp.maximum(jnp.sum(rel), 1)


def query_margins(queries: jax.Array, docs: jax.Array, rel: jax.Array) -> jax.Array:
  """(M,) ``min relevant score - max non-relevant score`` per query (+inf if a side is empty).

  ``docs`` is (n, d) or (n, m, d), as for ``scores``."""
  s = scores(queries, docs)
  lowest_rel = jnp.min(jnp.where(rel, s, jnp.inf), axis=1)
  highest_neg = jnp.max(jnp.where(rel, -jnp.inf, s), axis=1)
  return lowest_rel - highest_neg


def solved(queries: jax.Array, docs: jax.Array, rel: jax.Array) -> jax.Array:
  """True when every query ranks all its relevant documents above all others (strictly)."""
  return jnp.all(query_margins(queries, docs, rel) > 0)


def _init(key: jax.Array, num_queries: int, num_docs: int, dim: int, doc_vectors: int = 1):
  kq, kd = jax.random.split(key)
  doc_shape = (num_docs, dim) if doc_vectors == 1 else (num_docs, doc_vectors, dim)
  return {'q': l2_normalize(jax.random.normal(kq, (num_queries, dim))),
          'd': l2_normalize(jax.random.normal(kd, doc_shape))}


def _optimizer(p: Protocol) -> optax.GradientTransformation:
  return optax.adam(p.learning_rate)


@dataclasses.dataclass(frozen=True)
class Qrels:
  """A qrel matrix in the two forms the gradient needs (a pytree, built once per problem).

  Attributes:
    rel: (M, n) bool.
    pos: (M, K) int32 relevant document indices per query, padded with 0 (K = most positives).
    valid: (M, K) bool, False on padding.
  """

  rel: jax.Array
  pos: jax.Array
  valid: jax.Array


jax.tree_util.register_dataclass(Qrels, data_fields=['rel', 'pos', 'valid'], meta_fields=[])


def make_qrels(rel) -> Qrels:
  rel = np.asarray(rel, dtype=bool)
  counts = rel.sum(1)
  k = max(int(counts.max()), 1)
  pos = np.zeros((rel.shape[0], k), np.int32)
  valid = np.arange(k)[None, :] < counts[:, None]
  rows, cols = np.nonzero(rel)  # row-major: each row's columns in order
  rank_in_row = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
  pos[rows, rank_in_row] = cols
  return Qrels(jnp.asarray(rel), jnp.asarray(pos), jnp.asarray(valid))


def _block_grads(queries, docs, rel, pos, valid, inv_t, scale):
  """``infonce_grads`` for one block of queries: (gq (b, d), this block's share of gd (n, d))."""
  s = (queries @ docs.T) * inv_t
  e = jnp.where(rel, 0.0, jnp.exp(s - inv_t))
  z = jnp.sum(e, axis=1)
  safe_z = jnp.where(z > 0, z, 1.0)
  n_i = inv_t + jnp.log(safe_z)
  docs_pos = docs[pos]                                          # (b, K, d)
  s_pos = jnp.einsum('bd,bkd->bk', queries, docs_pos) * inv_t
  # No negatives (z == 0): the pair's loss is softplus(-inf) = 0 and so is its gradient.
  sig = jnp.where(valid & (z > 0)[:, None], jax.nn.sigmoid(n_i[:, None] - s_pos), 0.0)
  g_neg = e * (jnp.sum(sig, axis=1) / safe_z * scale)[:, None]  # dL/ds on non-relevant docs
  w_pos = sig * scale                                           # -dL/ds on relevant docs
  gq = g_neg @ docs - jnp.einsum('bk,bkd->bd', w_pos, docs_pos)
  gd = g_neg.T @ queries - jax.ops.segment_sum(
      (w_pos[..., None] * queries[:, None, :]).reshape(-1, queries.shape[1]), pos.reshape(-1),
      num_segments=docs.shape[0])
  return gq, gd


def infonce_grads(queries: jax.Array, docs: jax.Array, qrels: Qrels, temperature: float,
                  block: int = 1024):
  """Gradient of ``infonce_loss`` w.r.t. (queries, docs), derived by hand for speed.

  With ``s = q d^T / t``, ``Z_i = sum_{j not rel} exp(s_ij - 1/t)``, ``N_i = 1/t + log Z_i`` and
  ``sig_ip = sigmoid(N_i - s_ip)`` for relevant p, the loss is ``sum softplus(N_i - s_ip) / P`` and

    dL/ds_ij = (sum_p sig_ip) exp(s_ij - 1/t) / Z_i / P   (j not relevant)
    dL/ds_ip = -sig_ip / P                                 (p relevant)

  Unit vectors bound the logits by 1/t, so ``exp(s - 1/t)`` needs no running max. The relevant
  documents' terms are gathered (M, K) rather than scattered into the (M, n) matrix, and the
  queries are processed ``block`` rows at a time in a ``scan`` so that each block's (block, n)
  scores stay in cache between the three products that use them (faster on CPU for the larger
  corpora of a sweep; measurements: BENCHMARKS.md). ``tests/limit`` checks it against
  ``jax.grad(infonce_loss)``.

  Args:
    queries: (M, d); docs: (n, d); qrels: the (M, n) qrels; temperature: > 0.
    block: queries per block (M is padded to a multiple; padded rows have no positives and so
      no gradient); 0 = all M queries in one block.

  Returns:
    (dL/dqueries (M, d), dL/ddocs (n, d)).
  """
  num_queries, dim = queries.shape
  if block < 0:
    raise ValueError(f'block must be >= 0, got {block}')
  block = num_queries if block == 0 else min(block, num_queries)
  num_blocks = -(-num_queries // block)
  pad = num_blocks * block - num_queries
  inv_t = 1.0 / temperature
  scale = inv_t / jnp.maximum(jnp.sum(qrels.valid), 1)

  def blocks(x):
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    return x.reshape(num_blocks, block, *x.shape[1:])

  def body(gd, xs):
    gq_b, gd_b = _block_grads(xs[0], docs, *xs[1:], inv_t, scale)
    return gd + gd_b, gq_b

  gd, gq = jax.lax.scan(body, jnp.zeros_like(docs),
                        (blocks(queries), blocks(qrels.rel), blocks(qrels.pos),
                         blocks(qrels.valid)))
  return gq.reshape(-1, dim)[:num_queries], gd


@dataclasses.dataclass(frozen=True)
class Execution:
  """Layout of the restarts' steps on the device (a static jit argument; results do not depend on
  it beyond float rounding).

  Attributes:
    batch_restarts: vmap the restarts' steps (one batched product per step: right for GPU/TPU,
      where a step of a few small products is launch-bound) or step them one after another with
      ``lax.map`` (right for XLA:CPU, whose batched matrix product is slower than the same
      products in sequence; measurements: BENCHMARKS.md).
    query_block: queries per gradient block in ``infonce_grads``; 0 = all queries at once.
  """

  batch_restarts: bool = False
  query_block: int = 1024

  def __post_init__(self):
    if self.query_block < 0:
      raise ValueError(f'Execution.query_block must be >= 0, got {self.query_block}')


def default_execution(backend: str | None = None) -> Execution:
  """The faster layout for ``backend`` (default: JAX's default backend)."""
  backend = backend or jax.default_backend()
  return Execution() if backend == 'cpu' else Execution(batch_restarts=True, query_block=0)


def _step(p: Protocol, qrels: Qrels, params, opt_state, query_block: int = 1024):
  """One Adam step on one restart, followed by re-normalisation. Returns (params, state).

  Single-vector documents take the hand-derived gradient; multi-vector ones (n, m, d) autodiff's
  (MaxSim's gradient reaches the best-matching vector of each document).
  """
  if params['d'].ndim == 2:
    gq, gd = infonce_grads(params['q'], params['d'], qrels, p.temperature, block=query_block)
  else:
    gq, gd = jax.grad(infonce_loss, argnums=(0, 1))(params['q'], params['d'], qrels.rel,
                                                     p.temperature)
  updates, opt_state = _optimizer(p).update({'q': gq, 'd': gd}, opt_state, params)
  params = jax.tree.map(l2_normalize, optax.apply_updates(params, updates))
  return params, opt_state


@dataclasses.dataclass(frozen=True)
class Attempt:
  """Outcome of one (qrels, d) optimisation over all restarts.

  Attributes:
    solved: whether some restart realised the qrels.
    steps: optimisation steps taken (the same for every restart: they run in lockstep).
    best_loss: (R,) lowest full-batch loss each restart had at a check (every check_every steps).
    fewest_violations: (R,) fewest queries violating the criterion at a check.
    margin: (R,) final ``min over queries`` of the per-query margin (> 0 means solved).
    seconds: wall time, compilation included.
  """

  solved: bool
  steps: int
  best_loss: np.ndarray
  fewest_violations: np.ndarray
  margin: np.ndarray
  seconds: float


def _run(p: Protocol, dim: int, ex: Execution, qrels: Qrels, key: jax.Array,
         doc_vectors: int = 1):
  """The jitted loop: chunks of ``check_every`` steps of every restart in a while_loop."""
  num_queries, num_docs = qrels.rel.shape
  params = jax.vmap(lambda k: _init(k, num_queries, num_docs, dim, doc_vectors))(
      jax.random.split(key, p.restarts))
  opt_state = jax.vmap(_optimizer(p).init)(params)
  one_step = lambda v, s: _step(p, qrels, v, s, ex.query_block)
  if ex.batch_restarts:
    step = jax.vmap(one_step)
  else:
    step = lambda v, s: jax.lax.map(lambda x: one_step(*x), (v, s))
  loss_of = jax.vmap(lambda v: infonce_loss(v['q'], v['d'], qrels.rel, p.temperature))

  def violations_and_margin(v):
    m = query_margins(v['q'], v['d'], qrels.rel)
    return jnp.sum(m <= 0), jnp.min(m)

  check = jax.vmap(violations_and_margin)

  def chunk(carry):
    params, opt_state, step_no, best, fewest, since, _ = carry
    params, opt_state = jax.lax.fori_loop(0, p.check_every, lambda _, c: step(*c),
                                          (params, opt_state))
    loss = loss_of(params)  # once per chunk: the steps themselves need only gradients
    violations, margins = check(params)
    if p.stop_on == 'loss':
      improved = loss < best * (1 - p.min_delta)
    else:
      improved = violations < fewest
    best = jnp.minimum(best, loss)
    fewest = jnp.minimum(fewest, violations)
    since = jnp.where(improved, 0, since + p.check_every)
    return params, opt_state, step_no + p.check_every, best, fewest, since, margins

  def keep_going(carry):
    _, _, step_no, _, _, since, margins = carry
    return ((step_no < p.max_steps) & ~jnp.any(margins > 0)
            & jnp.any(since < p.patience))

  violations, margins = check(params)
  carry = (params, opt_state, jnp.int32(0), jnp.full((p.restarts,), jnp.inf), violations,
           jnp.zeros((p.restarts,), jnp.int32), margins)
  params, _, steps, best, fewest, _, margins = jax.lax.while_loop(keep_going, chunk, carry)
  return params, steps, best, fewest, margins


_run_jit = jax.jit(_run, static_argnums=(0, 1, 2, 5))


def optimise(rel, dim: int, key: jax.Array, protocol: Protocol = Protocol(),
             return_params: bool = False, execution: Execution | None = None,
             doc_vectors: int = 1):
  """Tries to realise ``rel`` with free unit vectors in ``dim`` dimensions.

  Args:
    rel: (M, n) bool qrel matrix (numpy or jax).
    dim: embedding dimension d >= 1.
    key: PRNG key; restart r starts from ``split(key, R)[r]``.
    protocol: the optimisation protocol.
    return_params: also return the final vectors ``{'q': (R, M, d), 'd': (R, n, d)}``
      (``(R, n, m, d)`` for multi-vector documents).
    execution: device layout of the steps; default ``default_execution()``.
    doc_vectors: m, the vectors per document (1 = single-vector; m > 1 scores by MaxSim, see
      ``scores``). Queries keep one vector.

  Returns:
    An ``Attempt`` (and the params when asked).
  """
  chex.assert_rank(np.asarray(rel), 2)
  if dim < 1:
    raise ValueError(f'dim must be >= 1, got {dim}')
  if doc_vectors < 1:
    raise ValueError(f'doc_vectors must be >= 1, got {doc_vectors}')
  start = time.perf_counter()
  params, steps, best, fewest, margins = _run_jit(protocol, int(dim),
                                                  execution or default_execution(),
                                                  make_qrels(rel), key, int(doc_vectors))
  margins = np.asarray(margins)
  attempt = Attempt(solved=bool(np.any(margins > 0)), steps=int(steps),
                    best_loss=np.asarray(best), fewest_violations=np.asarray(fewest),
                    margin=margins,
                    seconds=time.perf_counter() - start)
  return (attempt, params) if return_params else attempt


# ----------------------------------------------------------------------------------------------
# Searches over n (critical-n) and over d (minimum dimension)


@dataclasses.dataclass
class SearchTrace:
  """Every attempt a search made: ``{size: Attempt}`` in the order they ran."""

  attempts: dict[int, Attempt] = dataclasses.field(default_factory=dict)

  def record(self, size: int, attempt: Attempt, log: Callable[[str], None] | None, what: str):
    self.attempts[size] = attempt
    if log:
      log(f'  {what}={size}: {"solved" if attempt.solved else "failed"} after {attempt.steps} '
          f'steps, best loss {float(np.min(attempt.best_loss)):.4g}, fewest violated queries '
          f'{int(np.min(attempt.fewest_violations))}, {attempt.seconds:.1f} s')


def _boundary(holds: Callable[[int], bool], start: int, first_step: int, lowest: int
              ) -> tuple[int, int]:
  """(largest size where ``holds``, smallest where it does not) for a predicate that holds up to
  a boundary and fails beyond it.

  Gallops from ``start`` (doubling the step) until the boundary is bracketed, then bisects. Sizes
  below ``lowest`` count as holding without a try. Assumes monotonicity: an optimiser's success
  is not strictly monotone, which the callers state.
  """
  n = max(start, lowest)
  step = max(first_step, 1)
  if holds(n):
    lo, hi = n, None
    while hi is None:
      n = lo + step
      if holds(n):
        lo, step = n, step * 2
      else:
        hi = n
  else:
    lo, hi = lowest - 1, n
    while True:
      n = max(hi - step, lowest)
      if n >= hi:  # hi == lowest: nothing left below
        break
      if holds(n):
        lo = n
        break
      hi, step = n, step * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if holds(mid):
      lo = mid
    else:
      hi = mid
  return lo, hi


def critical_n(dim: int, key: jax.Array, protocol: Protocol = Protocol(), *, start: int = 3,
               first_step: int = 4, log: Callable[[str], None] | None = None,
               doc_vectors: int = 1) -> dict:
  """Largest n whose all-pairs (k = 2) qrels free embeddings solve in ``dim`` dimensions
  (with ``doc_vectors`` vectors per document, scored by MaxSim when more than one).

  Returns:
    ``{'dim', 'critical_n' (largest solved n), 'first_failure' (smallest failed n),
    'attempts': {n: {...}}, 'seconds'}``. Each n gets its own key, ``fold_in(key, n)``, so a
    probe's outcome does not depend on the search path.
  """
  trace = SearchTrace()
  start_time = time.perf_counter()

  def is_solved(n: int) -> bool:
    if n not in trace.attempts:
      trace.record(n, optimise(all_pairs_qrels(n), dim, jax.random.fold_in(key, n), protocol,
                               doc_vectors=doc_vectors), log, f'd={dim} n')
    return trace.attempts[n].solved

  lo, hi = _boundary(is_solved, start, first_step, lowest=2)
  return {'dim': dim, 'doc_vectors': doc_vectors, 'critical_n': lo, 'first_failure': hi,
          'attempts': {n: _attempt_record(a) for n, a in trace.attempts.items()},
          'seconds': round(time.perf_counter() - start_time, 2)}


def min_dimension(rel, key: jax.Array, protocol: Protocol = Protocol(), *,
                  log: Callable[[str], None] | None = None) -> dict:
  """Smallest d at which free embeddings realise the qrel matrix ``rel`` (M, n).

  An upper bound always exists: with d = n the documents can be an orthonormal basis and each
  query the normalised sum of its relevant documents. The search gallops up from d = 1 and
  bisects, so it assumes success is monotone in d (more dimensions never hurt the optimum; the
  optimiser can still miss, which the restarts make unlikely).

  Returns:
    ``{'min_dim', 'largest_failed_dim', 'attempts': {d: {...}}, 'seconds'}``.
  """
  rel = np.asarray(rel, dtype=bool)
  if rel.ndim != 2 or rel.shape[0] == 0 or rel.shape[1] == 0:
    raise ValueError(f'rel must be a non-empty (queries, docs) matrix, got shape {rel.shape}')
  trace = SearchTrace()
  start_time = time.perf_counter()

  def fails(d: int) -> bool:  # increasing in d: failure at small d, success from min_dim on
    if d not in trace.attempts:
      trace.record(d, optimise(rel, d, jax.random.fold_in(key, d), protocol), log, 'd')
    return not trace.attempts[d].solved

  # d >= n needs no try: orthonormal documents realise any qrels (see above).
  cap = rel.shape[1]
  lo, hi = _boundary(lambda d: d < cap and fails(d), start=1, first_step=1, lowest=1)
  return {'min_dim': hi, 'largest_failed_dim': lo,
          'attempts': {d: _attempt_record(a) for d, a in sorted(trace.attempts.items())},
          'seconds': round(time.perf_counter() - start_time, 2)}


def _attempt_record(a: Attempt) -> dict:
  return {'solved': a.solved, 'steps': a.steps,
          'best_loss': [round(float(x), 6) for x in a.best_loss],
          'fewest_violations': [int(x) for x in a.fewest_violations],
          'min_margin': [round(float(x), 6) for x in a.margin],
          'seconds': round(a.seconds, 3)}


def fit_cubic(dims, ns) -> np.ndarray:
  """Least-squares cubic ``n(d) = c0 + c1 d + c2 d^2 + c3 d^3``; returns [c0, c1, c2, c3]."""
  dims = np.asarray(dims, np.float64)
  ns = np.asarray(ns, np.float64)
  if len(dims) < 4:
    raise ValueError(f'a cubic fit needs >= 4 points, got {len(dims)}')
  return np.polynomial.polynomial.polyfit(dims, ns, 3)


def eval_cubic(coef, d) -> np.ndarray:
  return np.polynomial.polynomial.polyval(np.asarray(d, np.float64), np.asarray(coef))
