"""Knowledge-distillation losses on embeddings, as sentence-transformers has them.

  margin_mse       MarginMSELoss: MSE between the student's and the teacher's score margins
  distill_kl_div   DistillKLDivLoss: KL(teacher softmax || student softmax) over candidates
  mse              MSELoss: MSE between student embeddings and given teacher embeddings

Teacher quantities are targets: they get no gradient (sentence-transformers detaches them).
Student scores use the row-pair similarities of ``embedjax.losses.pairwise.PAIR_SIMILARITIES``
('dot' as sentence-transformers' default ``pairwise_dot_score``).

References: Hofstätter et al. 2021 (Margin-MSE); Lin, Yang & Lin 2020 (KL distillation for dense
retrieval); Reimers & Gurevych 2020 (MSE distillation for multilingual embeddings).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from embedjax.losses.pairwise import PAIR_SIMILARITIES


def _similarity(name: str):
  if name not in PAIR_SIMILARITIES:
    raise ValueError(f'similarity {name!r} is not one of {sorted(PAIR_SIMILARITIES)}')
  return PAIR_SIMILARITIES[name]


def _as_candidates(q: jax.Array, negatives: jax.Array) -> jax.Array:
  """(B, D) or (B, H, D) negatives -> (B, H, D)."""
  if negatives.ndim == 2:
    negatives = negatives[:, None]
  chex.assert_rank(negatives, 3)
  chex.assert_shape(negatives, (q.shape[0], None, q.shape[1]))
  return negatives


def margin_mse(q: jax.Array, pos: jax.Array, neg: jax.Array, teacher_margin: jax.Array, *,
               similarity: str = 'dot') -> tuple[jax.Array, dict]:
  """Margin-MSE (sentence-transformers' ``MarginMSELoss``, one or several negatives).

  loss = mean over (i, k) of (sim(q_i, pos_i) - sim(q_i, neg_ik) - m_ik)^2 with m the teacher's
  margins.

  Args:
    q: (B, D) queries. pos: (B, D) first documents ("positives").
    neg: (B, D) second documents, or (B, H, D) for H negatives per query.
    teacher_margin: the teacher's labels, in any of sentence-transformers' layouts: (B,) margins
      (one negative), (B, H) margins pos - neg_k, or (B, H + 1) raw scores [pos, neg_1, ...],
      turned into margins score_pos - score_neg_k.
    similarity: a key of PAIR_SIMILARITIES.
  Returns:
    (scalar loss, metrics with 'loss' and 'margin' (the student's mean margin)).

  Example: student margins 1 - 0 = 1 for both rows; teacher margins 1 and 3 give (0 + 4) / 2.

  >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  >>> loss, metrics = jax.jit(margin_mse)(q, q, q[::-1], jnp.array([1.0, 3.0]))
  >>> float(loss), float(metrics['margin'])
  (2.0, 1.0)
  """
  chex.assert_rank([q, pos], 2)
  chex.assert_equal_shape([q, pos])
  negs = _as_candidates(q, neg)
  b, h = negs.shape[:2]
  labels = jnp.asarray(teacher_margin)
  if labels.shape == (b, h + 1):
    labels = labels[:, :1] - labels[:, 1:]
  if labels.shape == (b,):
    labels = labels[:, None]
  if labels.shape != (b, h):
    raise ValueError(f'teacher_margin shape {labels.shape}: expected ({b},) with one negative, '
                     f'({b}, {h}) margins or ({b}, {h + 1}) scores')
  sim = _similarity(similarity)
  margins = sim(q, pos)[:, None] - sim(q[:, None, :], negs)       # (B, H)
  loss = jnp.mean((margins - jax.lax.stop_gradient(labels).astype(margins.dtype)) ** 2)
  return loss, {'loss': loss, 'margin': jnp.mean(margins)}


def _check_temperature(name: str, value) -> None:
  # Only concrete numbers can be checked (a traced temperature is the caller's business).
  if isinstance(value, (int, float)) and not 0 < value < math.inf:
    raise ValueError(f'{name} must be a positive finite number, got {value}')


def distill_kl_div(q: jax.Array, pos: jax.Array, negs: jax.Array, teacher_scores: jax.Array, *,
                   temperature: float = 1.0, student_temperature: float | None = None,
                   teacher_temperature: float | None = None,
                   similarity: str = 'dot') -> tuple[jax.Array, dict]:
  """KL distillation (sentence-transformers' ``DistillKLDivLoss``).

  For each query, candidates are [pos, neg_1, ..., neg_H]; p = softmax(teacher / T_t) and
  log q = log_softmax(student / T_s); loss = T_s^2 * sum_i KL(p_i || q_i) / B ("batchmean"). The
  T_s^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).

  Args:
    q: (B, D) queries. pos: (B, D) positives. negs: (B, D) one negative or (B, H, D).
    teacher_scores: (B, 1 + H) teacher scores of [pos, neg_1, ...] (logits, not probabilities).
    temperature: shared temperature (sentence-transformers' default 1.0).
    student_temperature, teacher_temperature: per-side overrides of ``temperature``.
    similarity: a key of PAIR_SIMILARITIES for the student scores.
  Returns:
    (scalar loss, metrics with 'loss' and 'accuracy' (the student ranks the positive first)).

  Example: a student whose scores equal the teacher's has zero divergence.

  >>> q = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  >>> pos, negs = jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([[0.0, 1.0], [1.0, 0.0]])
  >>> loss, metrics = jax.jit(distill_kl_div)(q, pos, negs, jnp.array([[2.0, 0.0], [2.0, 0.0]]))
  >>> abs(float(loss)) < 1e-6, float(metrics['accuracy'])
  (True, 1.0)
  """
  chex.assert_rank([q, pos], 2)
  chex.assert_equal_shape([q, pos])
  negs = _as_candidates(q, negs)
  b, h = negs.shape[:2]
  chex.assert_shape(teacher_scores, (b, h + 1))
  t_student = temperature if student_temperature is None else student_temperature
  t_teacher = temperature if teacher_temperature is None else teacher_temperature
  for name, value in (('temperature', temperature), ('student_temperature', t_student),
                      ('teacher_temperature', t_teacher)):
    _check_temperature(name, value)
  sim = _similarity(similarity)
  student = jnp.concatenate([sim(q, pos)[:, None], sim(q[:, None, :], negs)], axis=1)  # (B, 1 + H)
  log_q = jax.nn.log_softmax(student / t_student, axis=1)
  teacher = jax.lax.stop_gradient(jnp.asarray(teacher_scores)).astype(log_q.dtype)
  p = jax.nn.softmax(teacher / t_teacher, axis=1)
  # torch.nn.KLDivLoss: target * (log target - input), 0 where the target is 0.
  kl = jnp.sum(xlogy(p, p) - p * log_q) / b
  loss = kl * t_student ** 2
  accuracy = jnp.mean(jnp.argmax(student, axis=1) == 0)
  return loss, {'loss': loss, 'accuracy': accuracy}


def mse(student: jax.Array, teacher: jax.Array) -> tuple[jax.Array, dict]:
  """Embedding MSE (sentence-transformers' ``MSELoss``, without a projection).

  loss = mean((student - teacher)^2). With several student columns (B, C, D), sentence-transformers
  averages the per-column MSEs; a (B, D) teacher is then the target of every column (its
  multilingual setup), a (B, C, D) teacher gives each column its own.

  Args:
    student: (B, D) or (B, C, D) student embeddings.
    teacher: (B, D) or, with a 3-D student, (B, C, D) teacher embeddings (no gradient).
  Returns:
    (scalar loss, metrics with 'loss').

  >>> loss, _ = jax.jit(mse)(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]]))
  >>> float(loss)   # (1 + 4) / 2
  2.5
  """
  teacher = jax.lax.stop_gradient(jnp.asarray(teacher)).astype(student.dtype)
  if student.ndim == 3 and teacher.ndim == 2:
    chex.assert_equal_shape([student[:, 0], teacher])
    teacher = teacher[:, None, :]   # one target for every column
  elif student.ndim in (2, 3):
    chex.assert_equal_shape([student, teacher])
  else:
    raise ValueError(f'student {student.shape}: expected (B, D) or (B, C, D)')
  # Equal-sized columns: the mean of the per-column means is the overall mean.
  loss = jnp.mean((student - teacher) ** 2)
  return loss, {'loss': loss}
