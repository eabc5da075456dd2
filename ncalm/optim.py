"""Optimizers and learning-rate schedules (docs/method.md §5).

Stage 1 as published: Adam (0.9, 0.999, 1e-8), lr 1e-4, no weight decay, no clipping,
and a schedule that warms up linearly over the whole run (`warmup`, so the last
checkpoint sits at peak lr). `warmup_cosine` is the decay variant (and stage 2's).
"""
from __future__ import annotations

from typing import Callable

import optax

from ncalm import errors

SCHEDULES = ('constant', 'warmup', 'warmup_cosine')


def schedule(name: str, peak_lr: float, warmup_steps: int, total_steps: int,
             final_lr: float = 0.0) -> optax.Schedule:
  """lr(step): `constant`; `warmup` (linear from 0, then constant); `warmup_cosine`."""
  if name not in SCHEDULES:
    raise errors.UserError(f'optim.schedule={name!r}: use one of {SCHEDULES}.')
  if name == 'constant':
    return optax.constant_schedule(peak_lr)
  if warmup_steps < 1:
    raise errors.UserError(f'optim.warmup_steps={warmup_steps} must be >= 1 for {name!r}.')
  if name == 'warmup':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, warmup_steps), optax.constant_schedule(peak_lr)],
        [warmup_steps])
  if total_steps <= warmup_steps:
    raise errors.UserError(f'optim.warmup_steps={warmup_steps} must be < '
                           f'train_steps={total_steps} for warmup_cosine.')
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps, final_lr)


def make_optimizer(cfg, total_steps: int, lr_factors: dict[str, Callable] | None = None,
                   labels=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, lr schedule) from an `optim` config block. With `lr_factors` ({group:
  factor(step)}) and `labels` (a pytree of group names like the parameters, or a function
  of them), each group's learning rate is the schedule × its factor; clipping stays global.
  The schedule returned is the block's own."""
  lr = schedule(cfg.schedule, cfg.lr, cfg.warmup_steps, total_steps, cfg.get('final_lr', 0.0))
  if cfg.name == 'adam' and cfg.weight_decay:
    raise errors.UserError('optim.weight_decay needs optim.name="adamw" (adam has none).')
  if cfg.name not in ('adam', 'adamw'):
    raise errors.UserError(f'optim.name={cfg.name!r}: use "adam" or "adamw".')

  def adam(factor):
    rate = lr if factor is None else (lambda step: lr(step) * factor(step))
    if cfg.name == 'adam':
      return optax.adam(rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    return optax.adamw(rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)

  if lr_factors:
    core = optax.multi_transform({g: adam(f) for g, f in lr_factors.items()}, labels)
  else:
    core = adam(None)
  if cfg.clip_norm:
    core = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
  return core, lr
