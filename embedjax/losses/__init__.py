"""Embedding losses: pure functions ``(q, d, ...) -> (scalar, metrics dict)``."""

from embedjax.losses.contrastive import info_nce
from embedjax.losses.matryoshka import matryoshka

LOSSES = {'info_nce': info_nce}
