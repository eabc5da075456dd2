"""The GPU check's report as Markdown: the machine, then one section per part."""
from __future__ import annotations


def _num(x, digits: int = 3) -> str:
  if x is None:
    return '–'
  if isinstance(x, bool):
    return 'yes' if x else 'no'
  if isinstance(x, int):
    return f'{x:,}'
  if isinstance(x, float):
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
      return f'{x:.{digits}g}'
    return f'{x:,.{digits}f}'
  return str(x)


def _gib(n) -> str:
  return '–' if n is None else f'{n / 2**30:.1f} GiB'


def _table(header: list[str], rows: list[list]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(_num(c) if not isinstance(c, str) else c for c in row) + ' |'
            for row in rows]
  return lines


def _flat(d: dict, prefix: str = '') -> list[list]:
  rows = []
  for k, v in d.items():
    if isinstance(v, dict):
      rows += _flat(v, f'{prefix}{k}.')
    else:
      rows.append([f'{prefix}{k}', v if not isinstance(v, list) else str(v)])
  return rows


def _steps(result: dict) -> list[str]:
  lines = [f'Device memory JAX may use: {result["target"]["hbm_gib"]:.1f} GiB.', '']
  for name, s in result['shapes'].items():
    shape = s['shape']
    lines += [f'**{name}**: {shape["params"] / 1e6:,.0f}M parameters, {shape["layers"]} layers, '
              f'd_model {shape["d_model"]}, batch {shape["batch"]} × {shape["seq_len"]} tokens, '
              f'{shape["dtype"]}, remat {shape["remat"]} (dry run: largest batch by remat '
              f'{s["dry_run"]["largest_batch_by_remat"]}'
              + (f'; XLA said batch {s["batch_reduced_from"]} would not fit' if
                 s['batch_reduced_from'] else '') + ').', '']
    rows = [[v, r['step_s'] * 1e3, r['tokens_per_s'], r['mfu'], r['compile_s'],
             _gib(r['xla_bytes']), r['cudnn_attention'], r['loss']] if 'error' not in r else
            [v, 'failed: ' + r['error'][:200].replace('|', '/').replace('\n', ' ')] + [''] * 6
            for v, r in s['variants'].items()]
    lines += _table(['variant', 'ms/step', 'tokens/s', 'MFU', 'compile s', 'XLA memory',
                     'cuDNN', 'loss'], rows)
    pct = lambda x: '–' if x is None else f'{x:+.1%}'
    lines += ['', f'In-step data share of the step: {pct(s["data_share"])}; fused ÷ plain '
              f'attention speed-up (no dropout): {_num(s["fused_speedup"], 2)}×; dropout costs '
              f'{pct(s["dropout_cost"])}; 4 query blocks speed the dropout step up '
              f'{_num(s["blocks_speedup"], 2)}×. Peak device memory {_gib(s["peak_bytes"])} '
              'against '
              f'the dry run\'s {_gib(s["predicted_bytes"])}. {s["compile_note"]}.', '']
  return lines


def render(doc: dict) -> str:
  lines = ['# ncalm GPU check', '']
  lines += _table(['machine', ''], [[k, str(v)] for k, v in doc['machine'].items()])
  for name, part in doc['parts'].items():
    lines += ['', f'## {name}: {"ok" if part["ok"] else "FAILED"} ({part["seconds"]} s)', '']
    if 'error' in part:
      lines += ['```', part['error'].rstrip(), '```']
    elif name == 'steps':
      lines += _steps(part['result'])
    else:
      lines += _table(['figure', 'value'], _flat(part['result']))
  return '\n'.join(lines) + '\n'
