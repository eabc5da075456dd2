"""Why a stage 1 costs the transferred model: weights, residual stream and attention at the
start of stage 2, transferred against scratch.

    python experiments/diagnose_transfer.py --stage1=STAGE1_DIR \
        --config=configs/text_code.py:cpu --out=DIR

--stage1 is a stage-1 workdir (it becomes the config's init.from_run; init.from_step picks a
checkpoint, 0 = the newest); --config is the stage-2 config it transfers into, whose
data.text.path must be a prepared dataset. DIR gets `diagnosis.json`, `diagnosis.md` (the
same numbers as tables) and `transfer.json` (what the transfer kept and re-drew). Measured:

- weights: for every tensor stage 2 takes from stage 1 (blocks and norms, each layer of a
  stacked tensor apart), the mean, std and RMS of the stage-1 tensor and of the same tensor
  of stage 2's own fresh init (`step.create_state`, the config's seed: where scratch starts),
  and the ratios stage 1 / fresh of the std and the RMS;
- the residual stream on stage 2's first training batch (rows 0 .. global_batch - 1 of the
  text feed), for the transferred initial parameters (`transfer.initial_state`) and for
  scratch's: its RMS (over rows, positions and d_model) after the embedding and after each
  layer;
- attention on that batch, per layer and head: the mean over rows and query positions of the
  entropy of the attention probabilities (nats), and of the attention distance Σ_k p(k)·(q - k)
  (positions back); beside them the same for uniform attention over the visible keys.

The residual stream comes from the model itself (the unscanned layout of the same
parameters, `capture_intermediates` of each block and of its attention norm; plain
attention, the compute dtype as configured); the attention probabilities are recomputed from
each layer's query and key projections of that norm's output, as `attention.causal_attention`
computes them. Runs in one process; about 8 s on 2 busy CPU cores for `configs/text_code.py:cpu`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from ncalm import cli
from ncalm import config_lib
from ncalm import errors
from ncalm import files
from ncalm import init_section
from ncalm import model as model_lib
from ncalm import param_names
from ncalm import run_params
from ncalm import startup
from ncalm import step as step_lib
from ncalm import transfer

JSON_FILE = 'diagnosis.json'
MARKDOWN_FILE = 'diagnosis.md'
DEFINITIONS = {
    'weights': 'mean, std and RMS over every element of one layer\'s tensor (float64); '
               'std_ratio = stage-1 std / fresh std (null where the fresh std is 0: norm '
               'scales start at 1), rms_ratio = stage-1 RMS / fresh RMS',
    'residual_rms': 'sqrt(mean of x^2) over every row, position and model dimension of the '
                    'residual stream after the embedding and after each layer (float64)',
    'entropy': '-sum_k p log p of each query\'s attention probabilities over its visible keys '
               '(nats), averaged over rows and query positions',
    'distance': 'sum_k p(k) (q - k): how many positions back a query attends, averaged over '
                'rows and query positions',
    'uniform': 'the same for uniform attention over the visible keys (the causal window, '
               'inside the document with data.text.document_masking)',
}


# ----------------------------------------------------------------- the measures


def tensor_stats(x) -> dict[str, float]:
  """{mean, std, rms} of every element of `x`, in float64."""
  x = np.asarray(x, np.float64)
  return dict(mean=float(x.mean()), std=float(x.std()), rms=float(np.sqrt(np.mean(x * x))))


def rms(x) -> float:
  """sqrt(mean(x²)) over every element, in float64."""
  x = np.asarray(x, np.float64)
  return float(np.sqrt(np.mean(x * x)))


def attention_stats(q_BLHD: jax.Array, k_BLHD: jax.Array,
                    segment_ids_BL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(entropy [H], distance [H]): the mean over rows and query positions of the entropy of
  softmax(q·k/√d) over the visible keys, and of Σ_k p(k)·(q − k). One row at a time."""
  length, head_dim = q_BLHD.shape[1], q_BLHD.shape[-1]
  position = jnp.arange(length)
  back = (position[:, None] - position[None, :]).astype(jnp.float32)    # Q, K

  def row(args):
    q, k, segments = args
    scores = jnp.einsum('qhd,khd->hqk', q, k).astype(jnp.float32) / jnp.sqrt(head_dim)
    visible = position[:, None] >= position[None, :]
    if segments is not None:
      visible = visible & (segments[:, None] == segments[None, :])
    probs = jax.nn.softmax(jnp.where(visible[None], scores, jnp.finfo(jnp.float32).min), axis=-1)
    entropy = -jnp.sum(jax.scipy.special.xlogy(probs, probs), axis=-1)      # H, Q
    distance = jnp.sum(probs * back[None], axis=-1)                          # H, Q
    return entropy.mean(axis=-1), distance.mean(axis=-1)

  entropy, distance = jax.lax.map(row, (q_BLHD, k_BLHD, segment_ids_BL))
  return entropy.mean(axis=0), distance.mean(axis=0)


def queries_keys(cfg: model_lib.ModelConfig, attn_params, x_BLE: jax.Array):
  """(q, k) [B, L, H, D] of an attention layer on its (normed) input, as the model makes them."""
  project = lambda name: model_lib.matmul(x_BLE, attn_params[name].astype(cfg.compute_dtype))
  return (model_lib.rotary(project('query'), cfg.rope_theta),
          model_lib.rotary(project('key'), cfg.rope_theta))


def per_layer(params) -> dict:
  """A parameter tree in the unscanned layout ('layers_i/...'), whichever it was in."""
  canon, _ = run_params.canonical(param_names.flat(params))
  return param_names.nest({n: v[0][v[1]] if isinstance(v, tuple) else v for n, v in canon.items()})


def measurement_model(cfg: model_lib.ModelConfig) -> model_lib.ModelConfig:
  """The model as measured: unscanned (a block per layer, to capture), plain attention."""
  return dataclasses.replace(cfg, scan_layers=False, remat='none', attention='plain',
                             scan_unroll=1)


def residual_stream(cfg: model_lib.ModelConfig, params, tokens_BL, segment_ids_BL=None):
  """(residual stream [num_layers + 1] after the embedding and each layer, attention-norm
  outputs [num_layers], logits) of the model on a batch; `params` in the unscanned layout."""
  model = model_lib.Transformer(measurement_model(cfg))
  capture = lambda module, method: method == '__call__' and (
      (module.name or '').startswith('layers_') or module.name == 'attn_norm')
  logits, variables = model.apply({'params': params}, tokens_BL, deterministic=True,
                                  segment_ids_BL=segment_ids_BL, capture_intermediates=capture,
                                  mutable=['intermediates'])
  found = variables['intermediates']
  stream = [jnp.take(params['embedding'], tokens_BL, axis=0).astype(cfg.compute_dtype)]
  normed = []
  for i in range(cfg.num_layers):
    stream.append(found[f'layers_{i}']['__call__'][0][0])    # Block returns (x, None)
    normed.append(found[f'layers_{i}']['attn_norm']['__call__'][0])
  return stream, normed, logits


def measure(cfg: model_lib.ModelConfig, params, tokens_BL, segment_ids_BL=None):
  """{stream, entropy [L, H], distance [L, H]} of one parameter set on a batch (jitted)."""
  stream, normed, _ = residual_stream(cfg, params, tokens_BL, segment_ids_BL)
  entropy, distance = [], []
  for i, x in enumerate(normed):
    q, k = queries_keys(cfg, params[f'layers_{i}']['attn'], x)
    e, d = attention_stats(q, k, segment_ids_BL)
    entropy.append(e)
    distance.append(d)
  return dict(stream=stream, entropy=jnp.stack(entropy), distance=jnp.stack(distance))


def uniform_stats(cfg: model_lib.ModelConfig, tokens_BL, segment_ids_BL=None):
  """(entropy, distance) of uniform attention over the visible keys (q = 0: equal scores)."""
  zeros = jnp.zeros((*tokens_BL.shape, 1, 2), jnp.float32)
  entropy, distance = attention_stats(zeros, zeros, segment_ids_BL)
  return float(entropy[0]), float(distance[0])


# ------------------------------------------------------------------- the inputs


def _refuse_out(out: str, stage1: str) -> None:
  if not out:
    raise errors.UserError('--out is empty: name the folder diagnosis.json and .md go to.')
  if os.path.realpath(out) == os.path.realpath(stage1):
    raise errors.UserError(f'--out={out!r} is the stage-1 workdir, which is only read: write '
                           'the diagnosis to a folder of its own.')
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.UserError(f'--out={out!r} is a file: name a folder (it is made if missing).')
  files.check_can_create(os.path.join(out, JSON_FILE), '--out')


def stage2_configs(cfg: ml_collections.ConfigDict, stage1: str):
  """(transferred, scratch) configs: init.from_run = stage1, and the same config from
  scratch (init as the defaults, with the configured new embedding unless 'keep')."""
  transferred = copy.deepcopy(cfg)
  transferred.init.from_run = stage1
  scratch = copy.deepcopy(cfg)
  scratch.init = config_lib.base_config().init
  scratch.init.embedding = 'normal' if cfg.init.embedding == 'keep' else cfg.init.embedding
  return transferred, scratch


def first_batch(cfg: ml_collections.ConfigDict, feed) -> tuple[np.ndarray, np.ndarray | None]:
  """(inputs, segment ids or None) of stage 2's first training batch, as the loop's
  `text.Prefetcher` makes it: rows 0 .. global_batch - 1 of the text feed."""
  rows, segments = feed.read_rows_and_segments(0, cfg.global_batch)
  return rows[:, :-1], segments[:, :-1] if cfg.data.text.document_masking else None


def _how_per_layer(report: dict, name: str) -> str:
  """What the transfer did to one layer's tensor ('kept', 'statistics', 'reinit', ...)."""
  layer, rest = param_names.split_layer(name)
  kept = 'kept' if report['kept_as'] == 'weights' else 'statistics'
  for kind, key in (('kept', 'kept'), ('statistics', 'statistics'), ('reinit', 'reinitialised'),
                    ('new', 'new')):
    if name in report[key] or f'layers/{rest}' in report[key]:
      return kind
  if f'layers/{rest}' in report['mixed']:
    return 'reinit' if report['layers'][0] <= layer < report['layers'][1] else kept
  return 'kept'


def weight_rows(stage1: dict, fresh_params, report: dict) -> list[dict]:
  """One row per transferred tensor and layer: stage-1 and fresh statistics, their ratios."""
  canon1, _ = run_params.canonical(stage1)
  canon0, _ = run_params.canonical(param_names.flat(fresh_params))
  value = lambda v: np.asarray(v[0])[v[1]] if isinstance(v, tuple) else np.asarray(v)
  rows = []
  order = lambda n: (param_names.split_layer(n)[0] < 0, param_names.split_layer(n)[0], n)
  for name in sorted(canon1, key=order):
    layer, rest = param_names.split_layer(name)
    s1, s0 = tensor_stats(value(canon1[name])), tensor_stats(value(canon0[name]))
    rows.append(dict(name=rest if layer >= 0 else name, layer=layer if layer >= 0 else None,
                     stage1=s1, fresh=s0, how=_how_per_layer(report, name),
                     std_ratio=s1['std'] / s0['std'] if s0['std'] > 0 else None,
                     rms_ratio=s1['rms'] / s0['rms'] if s0['rms'] > 0 else None))
  return rows


# ------------------------------------------------------------------- the command


def diagnose(cfg: ml_collections.ConfigDict, stage1: str, out: str) -> dict:
  """Measures the transfer of `stage1` into `cfg`; writes out/diagnosis.{json,md}."""
  _refuse_out(out, stage1)
  run_params.run_steps(run_params.RunRef(stage1, field='--stage1'), out)   # a workdir at all
  cfg_t, cfg_s = stage2_configs(cfg, stage1)
  checked = startup.check(cfg_t)
  scratch_spec = init_section.parse(cfg_s)
  if checked.feeds.on_device:
    raise errors.UserError(f'data.source={cfg.data.source!r}: the diagnosis reads stage 2\'s '
                           'first batch of a prepared text dataset; give a stage-2 (text) '
                           'config, e.g. --config=configs/text_code.py:cpu.')
  setup = step_lib.create_setup(cfg_t, checked.model)
  startup.check_mesh(cfg_t, checked, setup.mesh)
  transfer.check_stage1(setup.init_spec, setup.abstract_state.params, out)   # the model fits
  os.makedirs(out, exist_ok=True)

  init_key, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))   # as train.py
  fresh = step_lib.create_state(setup, init_key)
  transferred = transfer.initial_state(setup, lambda: fresh, init_key, out).params
  scratch = fresh.params
  if scratch_spec.changes_fresh_init:   # scratch with the framework embedding and head
    scratch, _ = transfer.build_params(scratch_spec, fresh.params, None,
                                       jax.random.fold_in(init_key, transfer.TRANSFER_KEY))
  stage1_params, step = transfer.read_stage1(setup.init_spec, fresh.params, setup.mesh, out)
  with open(os.path.join(out, transfer.REPORT_FILE)) as f:
    report = json.load(f)

  tokens, segments = first_batch(cfg_t, checked.feeds.train_source)
  model_cfg = checked.model
  measured = {}
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    run = jax.jit(lambda p, t, s: measure(model_cfg, p, t, s))
    for arm, params in (('transferred', transferred), ('scratch', scratch)):
      got = jax.device_get(run(per_layer(params), tokens, segments))
      measured[arm] = dict(residual_rms=[rms(x) for x in got['stream']],
                           entropy=np.asarray(got['entropy'], np.float64).tolist(),
                           distance=np.asarray(got['distance'], np.float64).tolist())
    uniform_entropy, uniform_distance = uniform_stats(model_cfg, tokens, segments)
  result = dict(
      stage1=os.path.abspath(stage1), stage1_step=step, seed=cfg.seed,
      data=cfg.data.text.path, init=cfg_t.init.to_dict(), model=dataclasses.asdict(model_cfg),
      batch=dict(rows=int(tokens.shape[0]), seq_len=int(tokens.shape[1]), first_row=0,
                 document_masking=segments is not None),
      weights=weight_rows(stage1_params, fresh.params, report),
      residual_rms=dict(after=['embedding'] + [f'layer {i}' for i in range(model_cfg.num_layers)],
                        transferred=measured['transferred']['residual_rms'],
                        scratch=measured['scratch']['residual_rms']),
      attention=dict(
          entropy=dict(transferred=measured['transferred']['entropy'],
                       scratch=measured['scratch']['entropy'], uniform=uniform_entropy),
          distance=dict(transferred=measured['transferred']['distance'],
                        scratch=measured['scratch']['distance'], uniform=uniform_distance)),
      definitions=DEFINITIONS)
  write(result, out)
  return result


def _num(x: float | None) -> str:
  return '–' if x is None else f'{x:.4g}'


def markdown(r: dict) -> str:
  """The diagnosis as Markdown tables."""
  lines = [f'# Transfer diagnosis: {r["stage1"]} (step {r["stage1_step"]})', '',
           f'Stage 2: {r["data"]}, seed {r["seed"]}, embedding {r["init"]["embedding"]}; batch: '
           f'rows 0–{r["batch"]["rows"] - 1} of the training feed, {r["batch"]["seq_len"]} '
           'tokens each.', '', '## Weights: stage 1 against stage 2\'s fresh init', '',
           '| tensor | layer | how | stage-1 mean | stage-1 std | fresh mean | fresh std | '
           'std ratio | RMS ratio |', '|---|---|---|---|---|---|---|---|---|']
  for w in r['weights']:
    layer = '–' if w['layer'] is None else w['layer']
    lines.append(f'| {w["name"]} | {layer} | {w["how"]} | {_num(w["stage1"]["mean"])} | '
                 f'{_num(w["stage1"]["std"])} | {_num(w["fresh"]["mean"])} | '
                 f'{_num(w["fresh"]["std"])} | {_num(w["std_ratio"])} | {_num(w["rms_ratio"])} |')
  res = r['residual_rms']
  lines += ['', '## Residual-stream RMS on the first batch', '',
            '| after | transferred | scratch | ratio |', '|---|---|---|---|']
  for name, t, s in zip(res['after'], res['transferred'], res['scratch']):
    lines.append(f'| {name} | {_num(t)} | {_num(s)} | {_num(t / s if s else None)} |')
  ent, dist = r['attention']['entropy'], r['attention']['distance']
  lines += ['', '## Attention on the first batch', '',
            f'Uniform attention over the visible keys: entropy {_num(ent["uniform"])} nats, '
            f'distance {_num(dist["uniform"])} positions.', '',
            '| layer | head | entropy, transferred | entropy, scratch | distance, transferred | '
            'distance, scratch |', '|---|---|---|---|---|---|']
  for i, (et, es, dt, ds) in enumerate(zip(ent['transferred'], ent['scratch'],
                                           dist['transferred'], dist['scratch'])):
    for h in range(len(et)):
      lines.append(f'| {i} | {h} | {_num(et[h])} | {_num(es[h])} | {_num(dt[h])} | '
                   f'{_num(ds[h])} |')
  lines += ['', '## Definitions', '']
  lines += [f'- {k}: {v}.' for k, v in r['definitions'].items()]
  return '\n'.join(lines) + '\n'


def write(r: dict[str, Any], out: str) -> None:
  """out/diagnosis.json and out/diagnosis.md, each written whole or not at all."""
  with files.atomic_open(os.path.join(out, JSON_FILE)) as f:
    json.dump(r, f, indent=1)
  with files.atomic_open(os.path.join(out, MARKDOWN_FILE)) as f:
    f.write(markdown(r))


def main() -> None:
  """The flags are defined here, not at import, so that tests can import the module."""
  config = config_flags.DEFINE_config_file('config', None, 'The stage-2 config file.',
                                           lock_config=True)
  stage1 = flags.DEFINE_string('stage1', None, 'The stage-1 workdir (becomes init.from_run).')
  out = flags.DEFINE_string('out', None, 'Folder for diagnosis.json, diagnosis.md and '
                            'transfer.json (made if missing).')
  flags.mark_flags_as_required(['config', 'stage1', 'out'])

  def run_main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    diagnose(config.value, stage1.value, out.value)
    logging.info('Diagnosis: %s', os.path.join(out.value, MARKDOWN_FILE))

  cli.run(run_main)


if __name__ == '__main__':
  main()
