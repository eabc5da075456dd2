"""Dry run: what a config costs on a target mesh, from abstract shapes only.

    python -m ncalm.dryrun --config=configs/nca_164m.py
    python -m ncalm.dryrun --config=configs/nca_164m.py --targets=h100x1,v5p-32
    python -m ncalm.dryrun --config=configs/nca_164m.py --aot=v4-32 --libtpu=/path/libtpu.so
    python -m ncalm.dryrun --config=configs/nca_164m.py --targets=v5p-32 --nolower --require_fit

Nothing is allocated. For each target the table shows the config's own mesh, the
all-fsdp mesh and, when the config's mesh does not fit, the mesh to use instead;
`footprint.estimate(cfg, target, mesh)` is the pure function behind a row, and
ncalm/tools/footprint.py says what is counted per device. A config mesh of fixed sizes
(e.g. --config.mesh.data=4 --config.mesh.fsdp=4) lays out only on targets with that many
devices: on the others its row says so and is skipped (the fsdp and use rows remain).
`--require_fit` (for launch/tpu.sh --check_fit, before paying for a slice) exits 2 unless
the config, with its own mesh, runs and fits on every target; the one-paragraph error names
the mesh that would (`fit_problem`).

Checks (ncalm/tools/aot.py): the real train step is lowered on this host's devices with
abstract inputs (`aot.lower_train_step`), and, given libtpu, compiled ahead of time for a
TPU topology from this CPU (`aot.compile_for_tpu`): XLA's own per-device memory, and an
out-of-memory error if it does not fit.
"""
from __future__ import annotations

import copy
import math

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from ncalm import cli
from ncalm import errors
from ncalm import perf
from ncalm import sharding
from ncalm import startup
from ncalm.tools import aot
from ncalm.tools import footprint

# ------------------------------------------------------------------ the table

_COLUMNS = ('target', 'dev', 'hosts', 'row', 'data', 'fsdp', 'tens', 'B/dev', 'params',
            'adam', 'grads', 'w', 'act', 'total', 'HBM', 'use', 'fits', 's/step', 'hours')
_FORMAT = ('{:<12} {:>4} {:>5} {:<6} {:>4} {:>4} {:>4} {:>5} {:>7} {:>6} {:>6} {:>5} {:>6} '
           '{:>6} {:>5} {:>5} {:<5} {:>6} {:>6}')


def _gib(n: float) -> str:
  return f'{n / footprint.GIB:.2f}'


def format_header(cfg: ml_collections.ConfigDict, p: footprint.Footprint) -> list[str]:
  m, n = footprint.model_config(cfg), p.param_counts
  tokens = p.tokens_per_step
  return [
      f'model       {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads (dim '
      f'{m.head_dim}), mlp {m.mlp_dim}, vocab {m.vocab_size:,}, seq {cfg.seq_len:,}; '
      f'{m.dtype} compute, f32 params, remat {m.remat!r}',
      f'parameters  {n["total"]:,} total = {n["embedding"]:,} input embedding + '
      f'{n["non_embedding"]:,} non-embedding',
      f'            (blocks {n["blocks"]:,} + final norm {m.d_model:,} + head {n["head"]:,}); '
      f'sum over eval_shape leaves {n["leaves"]:,}',
      f'FLOPs       {p.flops_per_token / 1e9:.2f} GFLOP per token (perf.flops_per_token: '
      '6 x matmul params + attention; remat recomputation not counted)',
      f'tokens      {tokens:,} per step ({cfg.global_batch} x {cfg.seq_len:,}), grad_accum '
      f'{cfg.grad_accum}; {cfg.train_steps:,} steps = {tokens * cfg.train_steps / 1e6:,.1f}M',
  ]


def check_mesh(cfg: ml_collections.ConfigDict) -> None:
  """config.mesh sizes are positive, or -1 (all remaining devices) on at most one axis."""
  sizes = {a: cfg.mesh.get(a, 1) for a in sharding.MESH_AXES}
  bad = [a for a, n in sizes.items() if not isinstance(n, int) or (n < 1 and n != -1)]
  if bad or list(sizes.values()).count(-1) > 1:
    shown = ' '.join(f'config.mesh.{a}={n}' for a, n in sizes.items())
    raise errors.UserError(f'{shown}: each mesh axis is a positive number of devices, and at '
                           'most one may be -1 (all remaining devices), e.g. '
                           '--config.mesh.data=-1 --config.mesh.fsdp=4.')


def mesh_mismatch(cfg: ml_collections.ConfigDict, target: perf.Target | str) -> str:
  """'' when the config's mesh lays out on the target's devices, else one line saying why."""
  target = perf.TARGETS[target] if isinstance(target, str) else target
  try:
    footprint.mesh_axes(target, None, cfg)
    return ''
  except ValueError:
    pass
  sizes = {a: int(cfg.mesh.get(a, 1)) for a in sharding.MESH_AXES}
  fixed = math.prod(n for n in sizes.values() if n != -1)
  needs = f'a multiple of {fixed}' if -1 in sizes.values() else f'{fixed}'
  mesh = ' '.join(f'{a}={n}' for a, n in sizes.items())
  return (f'skipped: config.mesh {mesh} needs {needs} devices; {target.label} has '
          f'{target.num_devices}')


def _mesh_text(mesh: dict, prefix: str = '') -> str:
  return ' '.join(f'{prefix}{a}={n}' for a, n in mesh.items())


def fit_problem(cfg: ml_collections.ConfigDict, target: perf.Target | str,
                mfu: float = 0.4) -> str:
  """'' when the config runs on the target with its own mesh (the mesh the run will use)
  within footprint.FIT_FRACTION of HBM ('yes' in the fits column), else one sentence:
  what is wrong and the flags of the mesh to use instead (the 'use' row), if any fits."""
  target = perf.TARGETS[target] if isinstance(target, str) else target
  rows = {row: (p, note) for row, p, note in target_rows(cfg, target, mfu)}
  own, why = rows['config']
  if own is None:
    problem = why.removeprefix('skipped: ')
  elif own.problems:
    problem = f'config.mesh {_mesh_text(own.mesh)} cannot run: ' + '; '.join(
        q.rstrip('.') for q in own.problems)
  elif own.fits != 'yes':
    problem = (f'config.mesh {_mesh_text(own.mesh)} needs {own.hbm_fraction:.0%} of HBM '
               f'per device (fits: {own.fits}; yes is <= {footprint.FIT_FRACTION:.0%})')
  else:
    return ''
  use, note = rows.get('use', (None, ''))
  if use is None:
    return f'{target.label}: {problem}; no mesh of its devices fits ({note or "see the table"}).'
  fix = _mesh_text(use.mesh, '--config.mesh.')
  if use.vocab_size != footprint.model_config(cfg).vocab_size:
    fix += f' --config.model.vocab_size={use.vocab_size}'
  return (f'{target.label}: {problem}; this mesh fits: {fix} (the "use" row, '
          f'{use.hbm_fraction:.0%} of HBM).')


def target_rows(cfg: ml_collections.ConfigDict, target: perf.Target | str,
                mfu: float = 0.4) -> list[tuple[str, footprint.Footprint | None, str]]:
  """`footprint.target_rows`, except that a config mesh the target's devices cannot hold
  gives a 'config' row without a footprint (its note says why) and always a 'use' row. A
  row without a footprint has a note that starts with why."""
  target = perf.TARGETS[target] if isinstance(target, str) else target
  why = mesh_mismatch(cfg, target)
  if why:
    rows = [('config', None, why),
            ('fsdp', footprint.estimate(cfg, target, dict(fsdp=target.num_devices), mfu), ''),
            ('use', *footprint.recommend(cfg, target, mfu))]
  else:
    rows = footprint.target_rows(cfg, target, mfu)
  return [(row, p, note if p is not None or row == 'config' else f'no mesh fits: {note}')
          for row, p, note in rows]


def format_row(row: str, p: footprint.Footprint | None, note: str,
               target: perf.Target | None = None) -> list[str]:
  if p is None:
    where = (target.label, target.num_devices,
             max(1, target.num_devices // target.devices_per_host)) if target else ('', '', '')
    return [_FORMAT.format(*where, row, *['-'] * 15), f'    ! {note}']
  b, mesh = p.memory, p.mesh
  line = _FORMAT.format(
      p.label, p.num_devices, p.hosts, row, mesh['data'], mesh['fsdp'],
      mesh['tensor'], p.micro_batch_per_device, _gib(b.params), _gib(b.opt_state),
      _gib(b.grads), _gib(b.weights_compute), _gib(b.activations), _gib(b.total),
      f'{p.hbm_bytes / footprint.GIB:.0f}', f'{p.hbm_fraction:.0%}', p.fits,
      f'{p.step_seconds:.3f}', f'{p.hours:.2f}')
  return ([line] + [f'    ! cannot run: {q}' for q in p.problems]
          + ([f'    note: {note}'] if note else []))


def format_table(cfg: ml_collections.ConfigDict, targets: list[str], mfu: float) -> str:
  # The header's numbers (parameters, FLOPs, tokens) do not depend on the mesh.
  first = footprint.estimate(cfg, targets[0], dict(data=-1), mfu)
  lines = format_header(cfg, first) + ['']
  lines.append(_FORMAT.format(*_COLUMNS))
  for name in targets:
    for row, p, note in target_rows(cfg, name, mfu):
      lines += format_row(row, p, note, perf.TARGETS[name])
  c = jnp.dtype(first.compute_dtype).itemsize
  saved = _SAVED_PER_LAYER[first.remat].format(c=c)
  peaks = ', '.join(sorted({_peak_label(t) for t in targets}))
  lines += [
      '',
      "Per device, GiB. row: config = the config's mesh; fsdp = every device on fsdp; use = "
      'the mesh to use',
      '  (runnable, fits, least model parallelism). params f32 + adam (mu, nu f32) + grads '
      'f32, sharded by the',
      f'  logical-axis rules; w = {first.compute_dtype} copy of the local weights (casts '
      'hoisted out of the layer scan)',
      '  + one gathered block under fsdp; act = activations of B/dev sequences '
      '(ncalm.tools.footprint.activation_bytes):',
      f'  N x saved/layer [remat {first.remat!r}: {saved}]',
      f'  + one block recomputed [B*H*L^2*(4+4+{c}+1) f32 scores, probs, dropout; '
      f'3*B*L*M*{c} MLP; B*L*(3E+6E/t)*{c} rest]',
      '  + 3*B*L*V*4 f32 logits, log-softmax and gradient; H, M, V (and E in q, k, v) split '
      'over tensor t.',
      f'fits: yes <= {footprint.FIT_FRACTION:.0%} of HBM, tight <= 100%, no above. '
      f's/step: {mfu:.0%} MFU of the dense bf16 peak ({peaks}',
      f'  TFLOP/s per device), every device computing; hours for train_steps='
      f'{cfg.train_steps:,}.',
  ]
  notes = [f'  {perf.TARGETS[t].label}: {perf.TARGETS[t].note}'
           for t in targets if perf.TARGETS[t].note]
  if notes:
    lines += ['Devices:'] + notes
  return '\n'.join(lines)


_SAVED_PER_LAYER = {
    'full': 'B*L*E*{c} block input',
    'dots_no_batch': 'B*L*E*{c} block input + B*L*(2E+3E/t+2M/t)*{c} matmul outputs',
    'dots': 'B*L*E*{c} block input + B*L*(2E+4E/t+2M/t)*{c} + B*H/t*L^2*{c} matmul outputs',
    'none': 'the whole block, nothing recomputed',
}


def _peak_label(name: str) -> str:
  t = perf.TARGETS[name]
  return f'{t.chip} {perf.peak_flops(t.device_kind) / 1e12:.0f}'


# ------------------------------------------------------------------ --aot


def parse_aot(spec: str) -> list[tuple[str, str]]:
  """'v4-32,v5e-16:fsdp' → [('v4-32', 'run'), ('v5e-16', 'fsdp')]; rows: config|fsdp|use|run
  (run = config if it fits, else use)."""
  out = []
  for item in filter(None, (s.strip() for s in spec.split(','))):
    name, _, row = item.partition(':')
    if name not in perf.TARGETS:
      raise errors.UserError(f'--aot: unknown target {name!r}: use one of {list(perf.TARGETS)}.')
    if row not in ('', 'config', 'fsdp', 'use', 'run'):
      raise errors.UserError(f'--aot={item}: the row is config, fsdp, use or run.')
    out.append((name, row or 'run'))
  return out


def aot_lines(cfg: ml_collections.ConfigDict, requests: list[tuple[str, str]], libtpu: str,
              mfu: float):
  """Yields one line per AOT request (compiles take minutes: lines come as they finish)."""
  try:
    library = aot.find_libtpu(libtpu)
  except aot.AotUnavailable as e:
    yield f'AOT for TPU: skipped: {e}'
    return
  if not requests:
    yield (f'AOT for TPU: possible (libtpu at {library}); pass --aot=v4-32[,...] to compile '
           '(a minute or two each on 2 CPU cores).')
    return
  for name, row in requests:
    rows = {r: (p, note) for r, p, note in target_rows(cfg, name, mfu)}
    p = rows['use'][0] if row in ('use', 'run') and 'use' in rows else None
    p = p or rows.get(row, (None, ''))[0] or rows['config'][0]
    if p is None:
      yield f'AOT {perf.TARGETS[name].label} {row}: {rows["config"][1]}'
      continue
    label = f'AOT {perf.TARGETS[name].label} ' + ' '.join(f'{a}={n}' for a, n in p.mesh.items())
    run_cfg = copy.deepcopy(cfg)
    run_cfg.model.vocab_size = p.vocab_size   # the 'use' row may pad the vocabulary
    try:
      r = aot.compile_for_tpu(run_cfg, name, p.mesh, libtpu)
    except aot.AotUnavailable as e:
      yield f'{label}: not possible here: {e}'
      continue
    except Exception as e:  # pylint: disable=broad-except
      yield f'{label}: failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}'
      continue
    if r['oom']:
      yield f'{label}: does NOT fit (XLA, {r["seconds"]:.0f} s): {r["oom"]}'
    else:
      yield (f'{label}: compiled on this CPU in {r["seconds"]:.0f} s; XLA needs '
             f'{_gib(r["total_bytes"])} GiB per device (arguments {_gib(r["argument_bytes"])}, '
             f'temporaries {_gib(r["temp_bytes"])}, unaliased outputs '
             f'{_gib(r["output_bytes"] - r["alias_bytes"])}, code {_gib(r["code_bytes"])}); '
             f'estimated {_gib(p.memory.total)}')


# ------------------------------------------------------------------ the command


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_TARGETS = flags.DEFINE_list('targets', list(perf.TARGETS), f'Targets, of {list(perf.TARGETS)}.')
_MFU = flags.DEFINE_float('mfu', 0.4, 'Model FLOPs utilisation assumed for step times.')
_LOWER = flags.DEFINE_bool('lower', True, 'Lower the real train step on this host with '
                           'abstract inputs (seconds; nothing allocated).')
_COMPILE = flags.DEFINE_bool('compile', False, 'Also compile the lowered step for this host '
                              'and report the compile time (minutes for the paper\'s size).')
_AOT = flags.DEFINE_string('aot', '', 'TPU targets to compile the train step for ahead of '
                           'time, target[:config|fsdp|use]; needs libtpu (see --libtpu).')
_REQUIRE_FIT = flags.DEFINE_bool('require_fit', False, 'Exit 2 after the table unless the '
                                  'config with its own mesh runs and fits ("yes", not "tight") '
                                  'on every target; the error names the mesh that would '
                                  '(launch/tpu.sh --check_fit).')
_LIBTPU = flags.DEFINE_string('libtpu', '', 'libtpu.so, or a folder holding it (default: '
                              '$TPU_LIBRARY_PATH, then the libtpu package).')


def check_config(cfg: ml_collections.ConfigDict, path: str) -> None:
  """The config's own checks as one user error naming the file (before any tracing)."""
  try:
    startup.check(cfg)   # the run's own start-up check: fields, data, evaluators, model
    check_mesh(cfg)
  except ValueError as error:
    raise errors.UserError(f'--config={path}: {error}') from None


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}: every input is a --flag.')
  unknown = [t for t in _TARGETS.value if t not in perf.TARGETS]
  if unknown or not _TARGETS.value:
    what = f'unknown target(s) {", ".join(unknown)}' if unknown else 'no target'
    raise errors.UserError(f'--targets={",".join(_TARGETS.value)}: {what}; give any of '
                           f'{",".join(perf.TARGETS)} (comma-separated).')
  requests = parse_aot(_AOT.value)
  cfg = _CONFIG.value  # cli.run has checked that the file loads
  check_config(cfg, flags.FLAGS['config'].config_filename)
  logging.set_verbosity(logging.WARNING)  # the table is the output; no backend chatter
  print(f'ncalm dry run of {flags.FLAGS["config"].config_filename}: abstract shapes only, '
        'nothing allocated\n')
  print(format_table(cfg, _TARGETS.value, _MFU.value))
  print(flush=True)
  if _REQUIRE_FIT.value:
    problems = [p for p in (fit_problem(cfg, t, _MFU.value) for t in _TARGETS.value) if p]
    if problems:
      raise errors.UserError('--require_fit: ' + ' '.join(problems))
  if _LOWER.value:
    r = aot.lower_train_step(cfg, compile_step=_COMPILE.value)
    mesh = ' '.join(f'{a}={n}' for a, n in r['mesh'].items())
    print(f'Lowering: the train step lowers on {len(jax.devices())} {r["platform"]} device(s) '
          f'({mesh}, {r["scan_unroll"]} layer(s) per scan iteration) with abstract inputs in '
          f'{r["seconds"]:.1f} s, {r["stablehlo_chars"] / 1e6:.1f} MB of StableHLO; peak RSS '
          f'of this process {r["peak_rss_gib"]:.2f} GiB.')
    if r['compile_seconds'] is not None:
      print(f'Compiling it for this host took {r["compile_seconds"]:.1f} s.')
  for line in aot_lines(cfg, requests, _LIBTPU.value, _MFU.value):
    print(line, flush=True)


def command() -> None:
  """`python -m ncalm.dryrun` (or `-m ncalm.tools.dryrun`)."""
  flags.mark_flags_as_required(['config'])
  cli.run(main)


if __name__ == '__main__':
  command()
