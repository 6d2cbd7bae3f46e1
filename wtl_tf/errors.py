"""User-facing errors: problems the user fixes, which `python -m wtl_tf.main` reports as one line (exit code 2).

Anything else that escapes an experiment is a bug and keeps its traceback.
"""
import errno
import os
import sys
from typing import Callable, TypeVar

T = TypeVar('T')


class UserError(Exception):
  """A problem with the configuration, the data, the run directory or the run itself (not a bug)."""


class ConfigError(UserError, ValueError):
  """A bad gin file, binding or out-of-range setting. A ValueError for library callers that catch that."""


class WorkdirError(UserError):
  """An unusable run directory: a file, not writable, full, held by another process, or another run's."""


class TrainingDiverged(UserError):
  """A NaN or infinite loss; the run stops without saving, so the last checkpoint is the last good one."""


def check_ints(owner: str, least: int = 1, **values):
  """A ConfigError naming `owner.key` for the first value that is not an int >= least (None passes)."""
  for key, value in values.items():
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
      kind = 'a positive int' if least == 1 else f'an int >= {least}'
      raise ConfigError(f'{owner}.{key} must be {kind}, got {value!r}')


# Disk full, quota, read-only file system, permission: the machine, not the code (reported as one line).
_USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def report_user_errors(fn: Callable[[], T]) -> T:
  """fn(); a UserError (or a disk-full/permission OSError) exits 2 with one `error: ...` line on stderr.

  Anything else is a bug and keeps its traceback; so does every error with WTL_DEBUG=1.
  """
  try:
    return fn()
  except UserError as e:
    if os.environ.get('WTL_DEBUG'):
      raise
    message = str(e)
  except OSError as e:
    if e.errno not in _USER_OS_ERRORS or os.environ.get('WTL_DEBUG'):
      raise
    message = f'{e.strerror}: {e.filename}' if e.filename else str(e)
  print(f'error: {" ".join(message.split())} (set WTL_DEBUG=1 for a traceback)', file=sys.stderr)
  sys.exit(2)
