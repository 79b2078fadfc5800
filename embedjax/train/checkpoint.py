"""Orbax checkpointing of the train state and the data iterator's position.

One ``CheckpointManager`` (async saves) keeps the latest ``keep`` checkpoints plus the ``keep_best``
best by an evaluation metric. A checkpoint holds the TrainState (params, optimizer state, step)
and the grain iterator state (JSON), so a resumed run continues with the same data order; the PRNG
stream needs no saving because every step folds its step number into the run's base key.
Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from embedjax.config import ConfigError


class CheckpointMismatch(ConfigError):
  """A checkpoint that cannot be restored onto the run's state (one line)."""


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, *, keep: int = 2, keep_best: int = 1,
               best_metric: str | None = None, best_mode: str = 'max', async_save: bool = True):
    policies = [pp.LatestN(keep)]
    if best_metric:
      policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == 'min',
                               n=keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    self.best_metric = best_metric
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                          item_names=('state', 'data'))

  def save(self, step: int, state, data_state: dict, metrics: dict[str, float] | None = None) -> None:
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None  # no evaluation at this step: not a candidate for "best"
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     data=ocp.args.JsonSave(data_state)),
                       metrics=metrics)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric else None

  def saved_step(self) -> int | None:
    """The latest step whose checkpoint is complete on disk (re-read: a save cut short by an
    interruption never got renamed into place, so it is not counted)."""
    self._manager.reload()
    return self._manager.latest_step()

  def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
    """Restores onto ``abstract_state`` (e.g. ``jax.eval_shape`` output carrying shardings).

    A checkpoint whose arrays do not fit ``abstract_state`` (the run's model or optimizer changed)
    raises CheckpointMismatch with one line, instead of Orbax's multi-line traceback. Shapes are
    compared with the checkpoint's metadata first: Orbax reads arrays concurrently, and when one
    does not fit, the reads still in flight print tracebacks of their own after the error.
    """
    where = self._manager.directory / str(step)
    mismatch = _first_mismatch(_stored_shapes(where / 'state'), _shapes(abstract_state))
    if mismatch:
      raise CheckpointMismatch(f'checkpoint {where} does not fit this config\'s train state '
                               f'(changed model or optimizer?): {mismatch}')
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except (ValueError, TypeError, KeyError) as e:
      first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
      raise CheckpointMismatch(
          f'checkpoint {self._manager.directory / str(step)} does not fit this config\'s train '
          f'state (changed model or optimizer?): {first.strip()}') from e
    return restored['state'], restored['data']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path of names: shape} of a tree's array leaves (dict keys, attribute names and sequence
  indices as strings: how Orbax names a saved tree)."""
  def name(key) -> str:
    for attr in ('name', 'key', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {tuple(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, 'shape')}


def _stored_shapes(path) -> dict[tuple[str, ...], tuple[int, ...]]:
  """The shapes a saved state item holds, from its metadata (no array is read)."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return _shapes(handler.metadata(path).tree)
  except (OSError, ValueError, KeyError):  # no readable metadata: Orbax's restore will say
    return {}
  finally:
    handler.close()


def _first_mismatch(stored: dict, wanted: dict) -> str | None:
  """The first array of ``wanted`` missing from ``stored`` or shaped differently (one line), or
  of ``stored`` that ``wanted`` lacks; None when they agree or share no path at all (layouts that
  cannot be compared are left to Orbax)."""
  if not stored.keys() & wanted.keys():
    return None
  for path in sorted(wanted, key=lambda p: (p[0] != 'params', p)):  # a parameter names it best
    if path not in stored:
      return f'{"/".join(path)} is not in the checkpoint'
    if stored[path] != wanted[path]:
      return (f'{"/".join(path)} has shape {stored[path]} in the checkpoint, '
              f'{wanted[path]} in this config')
  extra = sorted(stored.keys() - wanted.keys())
  return f'{"/".join(extra[0])} is in the checkpoint, not in this config' if extra else None


def abstract_like(state, sharding) -> Any:
  """ShapeDtypeStructs of ``state`` placed with ``sharding`` (restore target)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore_params(directory: str | os.PathLike) -> tuple[int, Any]:
  """(step, params) of the latest checkpoint in ``directory`` (a run's ``checkpoints/``), without
  the run's train state: for starting another run from it (two-stage training,
  ``model.init_checkpoint``). Only the params are read (a partial restore: no optimizer state),
  as host numpy arrays, whatever devices the run was saved from. ConfigError (one line) when
  there is none."""
  import numpy as np
  from etils import epath
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise ConfigError(f'{directory}: no checkpoints folder (has that run saved a checkpoint?)')
  manager = ocp.CheckpointManager(directory, item_names=('state', 'data'),
                                  options=ocp.CheckpointManagerOptions(create=False,
                                                                       read_only=True))
  step = manager.latest_step()
  manager.close()
  if step is None:
    raise ConfigError(f'{directory}: no complete checkpoint')
  path = epath.Path(directory) / str(step) / 'state'
  handler = ocp.PyTreeCheckpointHandler()
  try:
    wanted = {'params': handler.metadata(path).tree['params']}
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = handler.restore(path, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=as_numpy, partial_restore=True))
  finally:
    handler.close()
  return int(step), restored['params']
