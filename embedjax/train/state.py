"""The training state: everything a step reads and writes, and nothing else."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # () int32, number of updates applied
  params: Any            # {'encoder': BERT params, 'logit_scale'?: () float32}
  opt_state: Any


def create_state(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
