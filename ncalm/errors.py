"""Errors a user can act on, and the exit code of each.

Anything raised as a `UserError` (or a subclass) is a problem with the input, the
workdir or the machine that the user can fix: every command prints its message as one
paragraph and exits with its `exit_code` (`ncalm.cli`). Everything else is a bug and keeps
its traceback.

Exit codes (README, "What happens when things go wrong"):
  0   the command finished (a training run reached train_steps);
  1   a bug: a Python traceback;
  2   refused: a config value, flag, file, permission or workdir problem, named with its fix;
  3   training stopped on a non-finite loss or gradient, or on a gradient of exactly 0 on
      its first steps (a model that cannot learn); the last good checkpoint is kept;
  4   a checkpoint could not be saved (e.g. disk full) or none in the workdir is intact;
  75  stopped before train_steps by SIGTERM (preemption) after saving: rerun to resume.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_CHECKPOINT = 4
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a retry (same command) resumes the run


class Exit(Exception):
  """An expected end of a command: printed as one paragraph, exits with `exit_code`."""
  exit_code = EXIT_BUG
  label = 'error'


class UserError(Exit, ValueError):
  """A problem the user can fix; the message names the field or file and the fix."""
  exit_code = EXIT_USER_ERROR


class Interrupted(Exit):
  """A run stopped (SIGTERM) before train_steps after saving: the same command resumes it."""
  exit_code = EXIT_INTERRUPTED
  label = 'stopped'


class NonFiniteLoss(UserError):
  """The loss or gradient of a step was NaN/Inf; nothing after the last good step is saved."""
  exit_code = EXIT_NON_FINITE


class DeadGradient(NonFiniteLoss):
  """The gradient was exactly 0 on a run's first steps: the model cannot learn."""


class CheckpointError(UserError):
  """A checkpoint could not be written, or none in the workdir can be restored."""
  exit_code = EXIT_CHECKPOINT
