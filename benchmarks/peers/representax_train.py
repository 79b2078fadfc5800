"""representax (JAX + Equinox) training steps, driven over stdin/stdout by benchmarks/train_cpu.py.

Runs in representax's own virtualenv (it pins its own jax/optax/orbax), so it imports nothing from
embedjax. Started as

    /tmp/rx/bin/python benchmarks/peers/representax_train.py --inputs batch.npz \
        --model-path FOLDER [--random-init]

it builds representax's own compiled step (``representax.train.step.build_train_step``: the
step ``run_job`` compiles) for ``MNRTask(scale=20)`` (its sentence-transformers-parity
MultipleNegativesRankingLoss, in-batch negatives, query->doc) on the model loaded by its own
dense sentence-transformers loader (``load_sentence_transformer_artifact``; or, with
--random-init or when loading fails, a random-init ``BertEncoder`` of the same shape), AdamW
(lr 2e-5, weight decay 0.01, no clipping: ``max_grad_norm=None``), FP32 policy, dropout on (a
fresh PRNG key per step), state donated. Then it answers one command per stdin line with one JSON
line on stdout (everything else goes to stderr):

  warmup N   run N untimed steps          -> {"warmup_s": [...]}
  run N      run N steps, each timed      -> {"times": [...], "cpu_times": [...], "loss": ...}
  quit                                    -> {"bye": true}

The first line it prints is {"ready": ...} with versions, what was loaded and the no-dropout loss
of the batch (a cross-check that the three systems compute the same objective).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback


def _emit(obj) -> None:
  sys.stdout.write(json.dumps(obj) + '\n')
  sys.stdout.flush()


def _versions() -> dict:
  from importlib import metadata
  out = {}
  for name in ('representax', 'jax', 'jaxlib', 'equinox', 'optax'):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def build(args):
  import jax
  import numpy as np

  info: dict = {}
  encoder, load_error = None, None
  if not args.random_init:
    try:
      from representax.integrations.sentence_transformers import load_sentence_transformer_artifact
      encoder = load_sentence_transformer_artifact(args.model_path).encoder
      info['weights'] = f'loaded by representax from {args.model_path}'
    except Exception as e:  # noqa: BLE001 - recorded, then the same shape is random-initialised
      load_error = f'{type(e).__name__}: {e}'
  if encoder is None:
    encoder = random_encoder(MINILM_L6, 30522, jax.random.key(0))
    info['weights'] = 'random init (MiniLM-L6 shape)'
    if load_error:
      info['load_error'] = load_error
  step, state, batch, more = build_step(encoder, dict(np.load(args.inputs)), lr=args.lr,
                                        weight_decay=args.weight_decay)
  return step, state, batch, {**more, **info}


def build_step(encoder, data: dict, *, lr: float, weight_decay: float, bfloat16: bool = False):
  """representax's own compiled step for ``encoder`` on one batch of ``data`` (numpy arrays
  query_ids/query_mask/doc_ids/doc_mask): (step, state, batch, info). ``bfloat16``: its
  ``PrecisionConfig.bfloat16_mixed()`` policy (bf16 compute and activations, float32 master
  weights, accumulation and loss), else its FP32 policy."""
  import equinox as eqx
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from representax.models.sentence import SentenceBatch, SentenceEncoder
  from representax.precision import FP32_POLICY, resolve_precision_policy
  from representax.tasks.retrieval import MNRTask, retrieval_batch
  from representax.train.step import build_train_step, init_train_state

  info: dict = {'versions': _versions(), 'jax_backend': jax.default_backend()}
  sentence = isinstance(encoder, SentenceEncoder)

  def column(ids, mask):
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    inputs = encoder.make_batch(input_ids=ids, attention_mask=mask)
    return SentenceBatch(backbone_inputs=inputs, pooling_mask=mask) if sentence else inputs

  b = data['query_ids'].shape[0]
  batch = retrieval_batch(query=column(data['query_ids'], data['query_mask']),
                          document=column(data['doc_ids'], data['doc_mask']),
                          positive_mask=np.eye(b, dtype=bool))
  task = MNRTask(scale=20.0)
  tx = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay)
  # As run_job does: the model's own training filter (it leaves BERT's unused pooler out).
  trainable = encoder.training_filter() if callable(getattr(encoder, 'training_filter', None)) \
      else eqx.is_inexact_array
  if bfloat16:
    from representax.config import PrecisionConfig
    policy, policy_name = resolve_precision_policy(PrecisionConfig.bfloat16_mixed()), 'bfloat16_mixed'
  else:
    policy, policy_name = FP32_POLICY, 'FP32'
  state = init_train_state(encoder, tx, precision=policy, trainable_filter=trainable)
  step = build_train_step(task, tx, max_grad_norm=None, donate_state=True, precision=policy,
                          trainable_filter=trainable)
  # Deterministic (no-dropout: key=None) loss of the batch, for the cross-check.
  info['loss_no_dropout'] = float(jax.jit(lambda m, bt: task.loss(m, bt, key=None).loss)(encoder, batch))
  info['batch'] = {'pairs': b, 'query_len': int(data['query_ids'].shape[1]),
                   'doc_len': int(data['doc_ids'].shape[1])}
  info['step'] = ('representax.train.step.build_train_step(MNRTask(scale=20), optax.adamw(lr, '
                  f'eps=1e-6, weight_decay), max_grad_norm=None, donate_state=True), {policy_name} '
                  'policy')
  return step, state, batch, info


MINILM_L6 = {'hidden': 384, 'layers': 6, 'heads': 12, 'intermediate': 1536}


def random_encoder(shape: dict, vocab: int, key, *, attention: str = 'xla',
                   attention_dropout: float = 0.1):
  """A random-init representax ``BertEncoder`` of ``shape`` (hidden, layers, heads, intermediate):
  float32 parameters and compute, its attention implementation ('xla' or 'cudnn'). bf16 compute
  comes from the step's precision policy (``build_step(bfloat16=True)``), which representax's
  layers read at trace time; an encoder built with ``compute_dtype=bfloat16`` instead fails to
  trace in its layer scan (representax 0.0.2: a bf16 carry, a float32 layer output)."""
  from representax.models.bert.config import BertConfig
  from representax.models.bert.model import BertEncoder
  cfg = BertConfig(vocab_size=vocab, hidden_size=shape['hidden'],
                   num_hidden_layers=shape['layers'], num_attention_heads=shape['heads'],
                   intermediate_size=shape['intermediate'], max_position_embeddings=512,
                   type_vocab_size=2, attention_dropout_probability=attention_dropout)
  # rematerialization='none' as the checkpoint loader uses (init's default is 'full', which would
  # recompute every layer in the backward pass and so not be the same work).
  return BertEncoder.init(cfg, key=key, rematerialization='none',
                          attention_implementation=attention)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--inputs', required=True, help='npz with query_ids/query_mask/doc_ids/doc_mask')
  p.add_argument('--model-path', required=True, help='sentence-transformers folder')
  p.add_argument('--random-init', action='store_true')
  p.add_argument('--lr', type=float, default=2e-5)
  p.add_argument('--weight-decay', type=float, default=0.01)
  args = p.parse_args(argv)
  import jax
  try:
    t0 = time.perf_counter()
    step, state, batch, info = build(args)
    info['setup_s'] = round(time.perf_counter() - t0, 2)
  except Exception as e:  # noqa: BLE001 - the driver records the exact error
    _emit({'error': f'{type(e).__name__}: {e}', 'traceback': traceback.format_exc()})
    return
  _emit({'ready': info})
  key = jax.random.key(1)
  n = 0

  def one():
    nonlocal state, n
    result = step(state, batch, jax.random.fold_in(key, n))
    state = result.state
    loss = result.metrics.loss
    jax.block_until_ready(loss)
    n += 1
    return float(loss)

  for line in sys.stdin:
    cmd = line.split()
    if not cmd:
      continue
    try:
      if cmd[0] == 'warmup':
        times = []
        for _ in range(int(cmd[1])):
          t = time.perf_counter()
          one()
          times.append(round(time.perf_counter() - t, 4))
        _emit({'warmup_s': times})
      elif cmd[0] == 'run':
        times, cpu, loss = [], [], None
        for _ in range(int(cmd[1])):
          c, t = time.process_time(), time.perf_counter()
          loss = one()
          times.append(time.perf_counter() - t)
          cpu.append(time.process_time() - c)
        _emit({'times': times, 'cpu_times': cpu, 'loss': loss})
      elif cmd[0] == 'quit':
        _emit({'bye': True, 'steps_done': n})
        return
      else:
        _emit({'error': f'unknown command {line.strip()!r}'})
    except Exception as e:  # noqa: BLE001
      _emit({'error': f'{type(e).__name__}: {e}', 'traceback': traceback.format_exc()})
      return


if __name__ == '__main__':
  main()
