"""Decoding speed: ncalm's KV-cache sampler against decoding by full forward passes and
against Hugging Face `transformers` `generate` (with its cache) on the same weights.

    python benchmarks/decode.py [--samples=64 --prompt=64 --new=448 --context=1024]

At the `configs/text_code.py:cpu` model's dimensions (2 layers, d_model 128, 4 heads, MLP
512, vocabulary 4,096, float32) with a 1,024-token context and random N(0, 0.02) weights
(×20, so that greedy choices are decisive): `--samples` greedy continuations of `--new`
tokens after a `--prompt`-token prompt.

* ncalm: `ncalm.sampler.Sampler` (one prefill, then one token per step from the cache, in a
  compiled while loop); compiled once first, then timed.
* full passes: the same model run over the whole fixed-length window for every new token
  (one compiled shape, the way the NCA probe decoded before the cache). Every pass costs the
  same, so `--full_tokens` of them are timed and the time per token is multiplied by `--new`.
* transformers: `LlamaForCausalLM.generate(do_sample=False, use_cache=True)` on the weights
  exported by `ncalm.hf_llama`, torch on this machine's threads.

Also printed: how many of the greedy tokens ncalm and transformers agree on, and the cache's
bytes against 2 × layers × batch × length × d_model × bytes per value.
"""
import platform
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import hf_llama
from ncalm import model as model_lib
from ncalm import sampler as sampler_lib
from ncalm import sharding

_SAMPLES = flags.DEFINE_integer('samples', 64, 'Rows decoded together.')
_PROMPT = flags.DEFINE_integer('prompt', 64, 'Prompt tokens.')
_NEW = flags.DEFINE_integer('new', 448, 'New tokens per row.')
_CONTEXT = flags.DEFINE_integer('context', 1024, 'The model context (max_len).')
_FULL_TOKENS = flags.DEFINE_integer('full_tokens', 8, 'Full-pass tokens timed.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (median kept).')
_SKIP_HF = flags.DEFINE_bool('skip_hf', False, 'Leave transformers out.')


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor()


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  cfg = model_lib.ModelConfig(vocab_size=4096, d_model=128, num_layers=2, num_heads=4,
                              mlp_dim=512, max_len=_CONTEXT.value, dtype='float32',
                              attn_dropout=0.0)
  model = model_lib.Transformer(cfg)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
  params = jax.tree.map(lambda x: x * 20 if x.ndim > 1 else x, params['params'])
  rows, new = _SAMPLES.value, _NEW.value
  prompts = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (rows, _PROMPT.value), 0,
                                          cfg.vocab_size))
  print(f'CPU: {cpu_model()} ({jax.device_count()} JAX device(s)); {rows} rows × {new} new '
        f'tokens after {_PROMPT.value}, context {cfg.max_len}')

  # ncalm, cached.
  mesh = sharding.make_mesh({'data': 1})
  sampler = sampler_lib.Sampler(cfg, mesh, sharding.LOGICAL_AXIS_RULES, rows)
  request = sampler_lib.Request(max_new_tokens=new)
  out = sampler.generate(params, prompts.tolist(), request)   # compiles
  cached = median_seconds(lambda: sampler.generate(params, prompts.tolist(), request),
                          _REPEATS.value)
  ours = np.array([r[0].tokens for r in out])

  # Full forward passes over a fixed window, one per new token.
  forward = jax.jit(lambda seq, last: jnp.argmax(model.apply({'params': params}, seq,
                                                             logits_at=last), axis=-1))
  window = np.zeros((rows, cfg.max_len), np.int32)
  window[:, :_PROMPT.value] = prompts

  def full_passes():
    seq = jnp.asarray(window)
    for i in range(_FULL_TOKENS.value):
      position = _PROMPT.value + i
      token = forward(seq, jnp.full((rows,), position - 1))
      seq = seq.at[:, position].set(token)
    return jax.block_until_ready(seq)

  full_passes()   # compiles
  full = median_seconds(full_passes, _REPEATS.value) / _FULL_TOKENS.value * new

  # The cache: what the decode state holds against 2·layers·batch·length·d_model·bytes.
  length = sampler_lib.bucket(_PROMPT.value, cfg.max_len) + new
  cache = jax.eval_shape(lambda: model_lib.init_cache(cfg, rows, length))
  held = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
  kv = sum(cache[k].size * cache[k].dtype.itemsize for k in ('key', 'value'))
  formula = 2 * cfg.num_layers * rows * length * cfg.d_model * 4

  print(f'ncalm cached      {cached:8.2f} s  {rows * new / cached:9.0f} tokens/s')
  print(f'full passes       {full:8.2f} s  {rows * new / full:9.0f} tokens/s  '
        f'(from {_FULL_TOKENS.value} timed tokens)  cached is {full / cached:.1f}× faster')
  if not _SKIP_HF.value:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    per_layer = {}
    for name, x in jax.tree_util.tree_flatten_with_path(params)[0]:
      key = jax.tree_util.keystr(name, simple=True, separator='/')
      if key.startswith('layers/'):
        for i in range(cfg.num_layers):
          per_layer[key.replace('layers/', f'layers_{i}/', 1)] = np.asarray(x[i])
      else:
        per_layer[key] = np.asarray(x)
    hf_cfg = hf_llama.llama_config({**cfg.__dict__}, cfg.vocab_size)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_cfg)).eval()
    hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                        hf_llama.export_tensors(per_layer).items()}, strict=True)
    inputs = torch.from_numpy(prompts.astype(np.int64))

    def generate():
      with torch.no_grad():
        return hf.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                           use_cache=True, max_new_tokens=new, min_new_tokens=new,
                           pad_token_id=0)
    theirs = generate()[:, _PROMPT.value:].numpy()
    hf_time = median_seconds(generate, _REPEATS.value)
    agree = float(np.mean(theirs == ours))
    print(f'transformers      {hf_time:8.2f} s  {rows * new / hf_time:9.0f} tokens/s  '
          f'(torch {torch.__version__}, {torch.get_num_threads()} threads, transformers '
          f'{transformers.__version__})  ncalm is {hf_time / cached:.1f}× faster')
    first = [int(np.argmax(a != b)) if np.any(a != b) else new for a, b in zip(ours, theirs)]
    print(f'greedy tokens equal to transformers\': {agree:.1%}; rows identical to the end: '
          f'{sum(f == new for f in first)}/{rows}; median first difference at token '
          f'{int(np.median(first))}')
  print(f'cache: key+value {kv / 2**20:.1f} MiB (+ positions {(held - kv) / 2**10:.0f} KiB) '
        f'for {length} slots; 2 × layers × batch × length × d_model × 4 bytes = '
        f'{formula / 2**20:.1f} MiB')


if __name__ == '__main__':
  app.run(main)
