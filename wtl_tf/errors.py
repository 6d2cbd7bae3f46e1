"""User-facing errors: problems the user fixes, which `python -m wtl_tf.main` reports as one line (exit code 2).

Anything else that escapes an experiment is a bug and keeps its traceback.
"""


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
