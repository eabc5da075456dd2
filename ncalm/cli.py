"""Runs a command's `main` so that user errors read as one paragraph, not a traceback.

    if __name__ == '__main__':
      cli.run(main)

Flag errors (unknown or malformed flags, a missing or broken config file, a typo'd
`--config.field=value`), `app.UsageError` and `errors.Exit` (user errors, a stop on
SIGTERM) are printed to stderr as one paragraph that names the flag, file or field and
the fix; the process exits with the error's code (`ncalm.errors`). Any other exception
is a bug and keeps its traceback.
"""
from __future__ import annotations

import ast
import logging as std_logging
import os
import sys
import textwrap
import traceback
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging

from ncalm import config_lib
from ncalm import errors

WIDTH = 100


def fail(message: str, code: int = errors.EXIT_USER_ERROR, label: str = 'error') -> NoReturn:
  """Prints `ncalm.<command>: <label>: message` as one wrapped paragraph and exits."""
  command = os.path.splitext(os.path.basename(sys.argv[0] or 'ncalm'))[0]
  prefix = f'ncalm.{command}' if command != '__main__' else 'ncalm'
  text = ' '.join(str(message).split())
  sys.stdout.flush()
  print(textwrap.fill(f'{prefix}: {label}: {text}', WIDTH, break_long_words=False,
                      break_on_hyphens=False), file=sys.stderr, flush=True)
  sys.exit(code)


def _config_flag_names(flag_values: flags.FlagValues) -> list[str]:
  return [name for name in flag_values  # DEFINE_config_file flags, not their overrides
          if isinstance(getattr(type(flag_values[name]), 'config_filename', None), property)]


def _config_file_problem(name: str, flag_values: flags.FlagValues, error: BaseException) -> str:
  """One sentence about a config file that could not be loaded."""
  flag = flag_values[name]
  path = flag.config_filename
  if path and not os.path.exists(path):
    return (f'--{name}={flag.serialize().split("=", 1)[-1]}: no such file {path!r}; give a '
            'config file, e.g. --config=configs/nca_164m.py[:variant].')
  cause = error
  while cause.__cause__ is not None or cause.__context__ is not None:
    cause = cause.__cause__ or cause.__context__
  where = ''
  frames = traceback.extract_tb(cause.__traceback__) if cause.__traceback__ else []
  inside = [f for f in frames if path and os.path.abspath(f.filename) == os.path.abspath(path)]
  if inside:
    where = f' (line {inside[-1].lineno})'
  return (f'--{name}: the config file {path!r} failed to load{where}: '
          f'{type(cause).__name__}: {_sentence(first_line(cause))}')


def _sentence(text: str) -> str:
  text = text.strip()
  return text if text.endswith(('.', '?', '!')) else text + '.'


def _config_parse_error(error: flags.Error) -> str | None:
  """The config file's own exception, raised while its flag was parsed, in one sentence."""
  text = str(error)
  head = text.split('\n', 1)[0]
  if 'Error whilst parsing config file' not in head or '=' not in head:
    return None
  name, value = head.split('--', 1)[-1].split(':', 1)[0].split('=', 1)
  path = value.split(':', 1)[0] if value.count(':') else value
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  where = [line for line in lines if f'"{os.path.abspath(path)}", line' in line]
  line_no = f' (line {where[-1].rsplit("line ", 1)[1].split(",")[0]})' if where else ''
  return (f'--{name}: the config file {path!r} failed to load{line_no}: '
          f'{_sentence(lines[-1] if lines else text)}')


def _unquoted(text: str) -> str:
  """A message as written, without the repr quoting a re-raised KeyError adds (once or
  more: "'\\'name\\'\\nDid you mean ...'" → "'name'\\nDid you mean ...")."""
  while len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':
    try:
      inner = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      break
    if not isinstance(inner, str):
      break
    text = inner
  return text


def first_line(error: BaseException) -> str:
  """The first two non-blank lines of an error's message, joined (its type if empty)."""
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  text = _unquoted(text.strip())
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return ' '.join(lines[:2]) if lines else type(error).__name__


def _config_path(arg: str) -> str:
  """'--config.evals.heldout.every=5' → 'evals.heldout.every'."""
  return arg.split('=', 1)[0].lstrip('-').split('.', 1)[-1]


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing, with every failure turned into one paragraph (exit code 2)."""
  try:
    rest = flag_values(argv)
  except flags.Error as error:
    fail(_config_parse_error(error)
         or f'{_sentence(first_line(error))} Run with --helpshort to list the flags.')
  except Exception as error:  # pylint: disable=broad-except
    # A --config.a.b=value override of a field the config does not have, or a value
    # of the wrong type: ml_collections raises plain KeyError/TypeError/ValueError.
    bad = [a for a in argv[1:] if a.startswith('--') and '.' in a.split('=', 1)[0]]
    if isinstance(error, SyntaxError) or not bad:  # in the config file itself
      given = [a for a in argv[1:] if a.split('=', 1)[0] in ('--config', '-config')]
      fail(f'{" ".join(given) or "--config"}: the config file failed to load: '
           f'{type(error).__name__}: {_sentence(first_line(error))}')
    moved = [(arg, path) for arg in bad if (path := _config_path(arg)) in config_lib.MOVED_FIELDS]
    if moved:
      fail('; '.join(f'{arg}: {path} is now {" and ".join(config_lib.MOVED_FIELDS[path])}'
                     for arg, path in moved) + '. Set the new field(s) instead.')
    unknown = 'no such field: ' if isinstance(error, KeyError) else ''
    fail(f'{" ".join(bad) or "the flags"}: {unknown}{_sentence(first_line(error))} Check the '
         'field names against ncalm/config_lib.py:base_config().')
  for name in _config_flag_names(flag_values):
    try:  # a config file that failed to load raises on its first attribute access
      getattr(flag_values[name].value, 'keys')
    except Exception as error:  # pylint: disable=broad-except
      fail(_config_file_problem(name, flag_values, error))
  return rest


class QuietLibraries(std_logging.Filter):
  """Drops orbax's and tensorflow-datasets' INFO chatter (a dozen lines per checkpoint; a
  line per dataset read) and the tracebacks of their errors: ncalm reports a failed save or
  a damaged checkpoint or dataset itself, in one line or one paragraph; their warnings and
  error lines stay."""

  QUIET = ('orbax', 'tensorflow_datasets')

  def filter(self, record):
    if not any(name in record.pathname for name in self.QUIET):
      return True
    record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def run(main: Callable[[list[str]], object]) -> None:
  """`app.run(main)` with user errors as one paragraph and their exit codes.

  The flags defined by `main`'s module are shown by --helpshort even when the command is
  started through a shim (`python -m ncalm.generate` runs `ncalm.tools.export`)."""
  for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

  def guarded(argv):
    logging.get_absl_handler().addFilter(QuietLibraries())
    try:
      return main(argv)
    except app.UsageError as error:
      fail(str(error))
    except errors.Exit as error:
      fail(str(error), error.exit_code, error.label)

  try:
    app.run(guarded, flags_parser=parse_flags)
  except SystemExit as done:   # absl ends --help with exit code 1; asking for help is no error
    asked = any(a.split('=', 1)[0] in HELP_FLAGS for a in sys.argv[1:])
    raise SystemExit(0 if asked and done.code == 1 else done.code) from None
