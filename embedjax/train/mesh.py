"""A ("data",) mesh over all devices of all processes, and how arrays are placed on it.

Params and optimizer state are replicated; batches are split along their leading (batch) axis.
The mesh uses *Auto* axis types: with jax's default explicit axes, ``q @ d.T`` with both operands
sharded on "data" is rejected, whereas under Auto XLA inserts the all-gather that a global-batch
contrastive loss needs.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def global_batch(mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays split over the "data" axis.

  ``local_batch`` holds this process's slice (global batch / process count rows, in process order).
  """
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
