"""Part 1: is ncalm right on this device? Differences recorded, never hidden.

  * logits: one small float32 model, the same parameters and tokens, at HIGHEST matmul
    precision on this device and on the host CPU backend (and at the device's default
    precision, which on a GPU is TF32);
  * fused attention (`jax.nn.dot_product_attention`, cuDNN on a GPU) against plain
    attention in bf16: logits, loss and gradients, and whether cuDNN was really called;
  * reference NCA mode against the published generator's test vectors: how many of the
    8 trajectories, frames and cells match bit for bit, and the rule parameters;
  * bf16 compute against float32: the loss of one NCA batch, same parameters.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ncalm import losses
from ncalm import model as model_lib
from ncalm.data import device_sources
from ncalm.data import nca
from ncalm.data import nca_tokens

import timing


def _model_cfg(smoke: bool, **changes) -> model_lib.ModelConfig:
  """A 4-layer, d_model 256 model on 1,024 tokens (a tiny one for --smoke)."""
  base = (dict(d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=76) if smoke else
          dict(d_model=256, num_layers=4, num_heads=4, mlp_dim=1024, max_len=1024))
  fixed = dict(vocab_size=10002, attn_dropout=0.0, dtype='float32', attention='plain')
  return model_lib.ModelConfig(**{**fixed, **base, **changes})


def _batch(cfg: model_lib.ModelConfig, rows: int):
  """An NCA batch of the published family, from fixed keys (host-made, committed nowhere)."""
  source = device_sources.NCASource(nca.NCAConfig(), cfg.max_len)
  return jax.jit(lambda k: source.batch(k, rows))(jax.random.PRNGKey(7))


def _params(cfg: model_lib.ModelConfig, device):
  with jax.default_device(device):
    tokens = jnp.zeros((1, cfg.max_len), jnp.int32)
    return jax.jit(model_lib.Transformer(cfg).init)(jax.random.PRNGKey(0), tokens)['params']


def _max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def logits_against_host(cfg, params_cpu, batch, smoke: bool) -> dict:
  cpu, device = jax.devices('cpu')[0], jax.devices()[0]
  tokens = np.asarray(batch.inputs)[:2]
  apply = jax.jit(model_lib.Transformer(cfg).apply)
  with jax.default_matmul_precision('highest'):
    host = apply({'params': params_cpu}, jax.device_put(tokens, cpu))
    here = apply({'params': jax.device_put(params_cpu, device)}, jax.device_put(tokens, device))
  default = apply({'params': jax.device_put(params_cpu, device)}, jax.device_put(tokens, device))
  return dict(model='4 layers, d_model 256, float32, 2 x 1,024 NCA tokens' if not smoke else
              'tiny', device=str(device.platform), max_abs_logit=float(np.abs(host).max()),
              highest_max_abs_diff=_max_abs(here, host),
              default_precision_max_abs_diff=_max_abs(default, host))


def fused_against_plain(cfg, params, batch) -> dict:
  plain_cfg = dataclasses.replace(cfg, dtype='bfloat16')
  fused_cfg = dataclasses.replace(plain_cfg, attention='dot_product')

  def make(cfg):
    model = model_lib.Transformer(cfg)
    def loss(p):
      logits = model.apply({'params': p}, batch.inputs)
      total, count = losses.masked_sums(logits, batch)
      return total / count, logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params).compile()

  plain, fused = make(plain_cfg), make(fused_cfg)
  (loss_p, logits_p), grads_p = plain(params)
  (loss_f, logits_f), grads_f = fused(params)
  grad_diff = max(jax.tree.leaves(jax.tree.map(_max_abs, grads_f, grads_p)))
  grad_scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_p))
  return dict(dtype='bfloat16', cudnn_called=timing.uses_cudnn_attention(fused),
              loss_plain=float(loss_p), loss_fused=float(loss_f),
              logits_max_abs_diff=_max_abs(logits_f, logits_p),
              max_abs_logit=float(jnp.abs(logits_p).max()),
              grads_max_abs_diff=grad_diff, grads_max_abs=grad_scale)


def reference_nca(vectors: dict) -> dict:
  """The published vectors on this device (reference mode sets HIGHEST itself)."""
  cfg = nca.NCAConfig()
  rollout = jax.jit(nca.rollout, static_argnames=('cfg', 'mode'))
  grids = np.asarray(rollout(jnp.asarray(vectors['rule_keys']), jnp.asarray(vectors['sim_keys']),
                             cfg, 'reference'))
  want = vectors['grids']
  tokens = np.asarray(nca_tokens.frames_to_tokens(jnp.asarray(grids), cfg))
  params = nca.rule_params(jnp.asarray(vectors['rule_keys'][0]), cfg)
  names = [(i, n) for i in range(3) for n in ('kernel', 'bias')]
  differing = {f'Conv_{i}.{n}': _max_abs(params[f'Conv_{i}'][n], vectors[f'rule0_Conv_{i}_{n}'])
               for i, n in names
               if not np.array_equal(np.asarray(params[f'Conv_{i}'][n]),
                                     vectors[f'rule0_Conv_{i}_{n}'])}
  same_frames = (grids == want).all(axis=(2, 3))
  return dict(trajectories=int(len(want)),
              trajectories_bit_exact=int(same_frames.all(axis=1).sum()),
              frames_bit_exact=f'{int(same_frames.sum())} / {same_frames.size}',
              cells_equal_fraction=float((grids == want).mean()),
              first_frame_differing=[int(np.argmin(row)) if not row.all() else None
                                     for row in same_frames],
              tokens_bit_exact=bool(np.array_equal(tokens, vectors['tokens'])),
              rule_params_bit_exact=not differing,
              rule_params_max_abs_diff=differing)


def bf16_against_f32(f32, params, batch) -> dict:
  out = {}
  for name, cfg in (('float32', f32), ('bfloat16', dataclasses.replace(f32, dtype='bfloat16'))):
    logits = jax.jit(model_lib.Transformer(cfg).apply)({'params': params}, batch.inputs)
    total, count = losses.masked_sums(logits, batch)
    out[f'loss_{name}'] = float(total / count)
  out['abs_diff'] = abs(out['loss_bfloat16'] - out['loss_float32'])
  return out


def run(smoke: bool, vectors: dict) -> dict:
  cfg = _model_cfg(smoke)
  params_cpu = _params(cfg, jax.devices('cpu')[0])
  params = jax.device_put(params_cpu, jax.devices()[0])
  batch = _batch(cfg, 4)
  checks = dict(logits_against_host=lambda: logits_against_host(cfg, params_cpu, batch, smoke),
                fused_against_plain=lambda: fused_against_plain(cfg, params, batch),
                reference_nca=lambda: reference_nca(vectors),
                bf16_against_f32=lambda: bf16_against_f32(cfg, params, batch))
  out, errors = {}, []
  for name, check in checks.items():   # one failing check does not hide the others
    try:
      out[name] = check()
    except Exception as e:  # pylint: disable=broad-except
      out[name] = dict(error=f'{type(e).__name__}: {str(e)[:600]}')
      errors.append(f'{name}: {out[name]["error"]}')
  return dict(**out, errors=errors)
