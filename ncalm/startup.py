"""What a config means on this machine, checked once before anything runs.

`check(cfg)` is the one start-up check that `ncalm.main` (through `train`),
`ncalm.experiment` and `ncalm.dryrun` share: the schema's fields and values
(`config_lib`), the data section (its builder in `ncalm.data.feeds`), the evaluators'
settings (`ncalm.eval.registry`) and the model section against the data's vocabulary.
It returns the run's bank-less feeds and its `ModelConfig`, with every 'auto' choice
resolved for this backend; nothing downstream computes a model config again.
`check_mesh` adds what needs the devices (batch and probe sizes against the mesh).
"""
from __future__ import annotations

import dataclasses

import jax
import ml_collections

from ncalm import config_lib
from ncalm import errors
from ncalm import init_section
from ncalm import model as model_lib
from ncalm import optim
from ncalm import sharding
from ncalm.data import feeds as feeds_lib
from ncalm.eval import registry


@dataclasses.dataclass(frozen=True)
class Checked:
  """A config that passed every start-up check, and what it resolved to."""
  feeds: feeds_lib.Feeds          # bank-less: vocabulary, shapes, self-description
  model: model_lib.ModelConfig    # the model section, 'auto' choices resolved


def check(cfg: ml_collections.ConfigDict) -> Checked:
  """Every check that needs no devices and writes nothing."""
  config_lib.check_fields(cfg)
  config_lib.check_values(cfg)
  optim.make_optimizer(cfg.optim, cfg.train_steps)   # schedule and optimizer refusals
  init_section.parse(cfg)                            # the init section's refusals
  feeds = feeds_lib.build(cfg)
  registry.check(cfg, feeds.val_source)
  return Checked(feeds, model_config(cfg, feeds.train_source.vocab_size))


def check_mesh(cfg: ml_collections.ConfigDict, checked: Checked, mesh) -> None:
  """The global batch and the evaluators' batches split over the data-parallel devices."""
  data_parallel = sharding.data_parallel_size(mesh)
  problem = sharding.batch_problem(cfg.global_batch, cfg.grad_accum, data_parallel)
  if problem:
    raise errors.UserError(problem)
  registry.check_mesh(cfg, checked.feeds.val_source, data_parallel)


def model_config(cfg: ml_collections.ConfigDict, source_vocab: int,
                 backend: str | None = None) -> model_lib.ModelConfig:
  """The model section as a ModelConfig: vocabulary checked against the data's, 'auto'
  choices (0 or 'auto') resolved for `backend` (default: this one), max_len = seq_len."""
  m = cfg.model
  vocab = m.vocab_size or source_vocab
  if vocab < source_vocab:
    raise errors.UserError(
        f'model.vocab_size={vocab} is too small for the data, which needs {source_vocab} '
        f'rows (its token ids; a text tokeniser\'s padded to a multiple of 128): set '
        f'model.vocab_size >= {source_vocab} (or 0 for automatic).')
  return model_lib.ModelConfig(**{
      **m.to_dict(), 'vocab_size': vocab, 'max_len': cfg.seq_len,
      'scan_unroll': m.scan_unroll or default_scan_unroll(m.num_layers, backend),
      'attention': attention_kind(m.attention, backend),
      'attention_blocks': (m.attention_blocks
                           or default_attention_blocks(cfg.seq_len, backend))})


# What 'auto' (0) means per backend; measured in docs/benchmarks.md ("Training step against
# the published step", "On one H200"). Where unmeasured, the conservative choice.


def default_scan_unroll(num_layers: int, backend: str | None = None) -> int:
  """Layers per scan iteration: all on CPU (faster), one on accelerators (fast compiles)."""
  return num_layers if (backend or jax.default_backend()) == 'cpu' else 1


def default_attention_blocks(seq_len: int, backend: str | None = None) -> int:
  """Causal query blocks: 4 on CPU and GPU where seq_len allows (measured faster on both:
  1.8x the attention on CPU; the paper's step with dropout 1.11x, GPT-2-small's 1.21x on an
  H200), 1 on TPU (unmeasured)."""
  blocked = (backend or jax.default_backend()) in ('cpu', 'gpu')
  return 4 if blocked and seq_len % 4 == 0 and seq_len >= 256 else 1


def attention_kind(choice: str, backend: str | None = None) -> str:
  """model.attention → ModelConfig.attention (used where no dropout applies).

  'fused' is the platform's fused attention: splash on TPU, jax.nn.dot_product_attention
  elsewhere (cuDNN on GPU); 'auto' is fused on accelerators and plain on CPU, where the
  plain path is faster; 'plain', 'dot_product' and 'splash' choose one directly.
  """
  choices = ('auto', 'fused', *model_lib.ATTENTION_KINDS)
  if choice not in choices:
    raise errors.UserError(f'model.attention={choice!r}: use one of {choices}.')
  backend = backend or jax.default_backend()
  if choice == 'auto':
    choice = 'plain' if backend == 'cpu' else 'fused'
  if choice == 'fused':
    return 'splash' if backend == 'tpu' else 'dot_product'
  return choice
