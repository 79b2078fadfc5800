"""embedjax.train: the pieces of a training run and the loop that composes them.

  base_config (module)   every field a run reads, with its default; check_config validates one
  make_train_step        the pure, jit-able step (``step.py``); StepConfig, build_loss
  make_optimizer         optax chain with schedule and weight-decay mask (``optim.py``)
  TrainState             params + optimizer state + step (``state.py``)
  make_mesh, ...         ('data', 'fsdp', 'tensor') mesh, logical-axis sharding rules (``sharding.py``)
  plan_memory            bytes per device of a run: params, optimizer, activations (``memory.py``)
  Checkpointer           Orbax checkpoints that resume exactly (``checkpoint.py``)
  SOURCES, make_loader   training data sources and the grain loader (``data.py``)
  mine_hard_negatives    hard negatives by exact search, sentence-transformers' filters
  mine_to_file           (anchor, positive) pairs -> a 'pairs' JSONL file with mined negatives
                         (``mining.py``)
  train                  the loop: config + workdir -> checkpoints, logs, evals (``loop.py``)
  fit                    the loop as one call for notebooks: model + rows -> trained model (``fitting.py``)

Names are imported on first use (Orbax and grain are slow to import).
"""

from __future__ import annotations

from embedjax.lazy import lazy_exports

_ATTRIBUTES = {
    'check_config': 'base_config', 'loss_defaults': 'base_config', 'use_loss': 'base_config',
    'eval_block': 'base_config',
    'Checkpointer': 'checkpoint', 'abstract_like': 'checkpoint',
    'SOURCES': 'data', 'Source': 'data', 'load_rows': 'data', 'make_loader': 'data',
    'tokenize_batch': 'data',
    'train': 'loop', 'dry_build': 'loop', 'build_model': 'loop', 'run_evals': 'loop',
    'fit': 'fitting', 'rows_source': 'fitting',
    'mine_hard_negatives': 'mining', 'mine_to_file': 'mining', 'MinedFile': 'mining',
    'make_mesh': 'sharding', 'replicated': 'sharding', 'batch_sharding': 'sharding',
    'global_batch': 'sharding', 'param_shardings': 'sharding', 'state_shardings': 'sharding',
    'plan_memory': 'memory',
    'make_optimizer': 'optim', 'make_schedule': 'optim',
    'TrainState': 'state', 'create_state': 'state',
    'StepConfig': 'step', 'build_loss': 'step', 'loss_and_grads': 'step',
    'make_train_step': 'step',
}
# Modules exported as themselves (``base_config`` is also the name of the function inside it).
_SUBMODULES = ('base_config', 'checkpoint', 'data', 'fitting', 'loop', 'memory', 'mining', 'optim',
               'sharding', 'state', 'step')

__all__ = sorted(_ATTRIBUTES) + list(_SUBMODULES)
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBMODULES)
