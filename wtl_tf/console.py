"""A quiet console: only wtl_tf's own lines (progress, summaries, one-line errors) reach the terminal.

Call `quiet()` first thing in an entry point, before TensorFlow or Beam is imported:

  from wtl_tf import console
  console.quiet()

By default it hides what the libraries print on their own:
  * TensorFlow's C++ logs. `TF_CPP_MIN_LOG_LEVEL=3` hides the ones logged after import (`E0000 ... cuInit`,
    `cpu_feature_guard`), but the shared libraries also log from their static initialisers (`I0000 ... oneDNN custom
    operations are on`, `cudart_stub`), through absl before any setting is read. So `quiet()` imports TensorFlow
    itself, with file descriptor 2 pointed elsewhere (an import that fails replays what it printed).
  * Python warnings (also in child processes, through PYTHONWARNINGS) and Python logging up to ERROR (absl,
    TensorFlow, Keras, Beam, apitools/BigQuery notices, gin's include-path probing, ...). wtl_tf reports through
    print and exceptions, which stay.
  * Beam's worker processes write to the inherited stderr; `muted_stderr()` around a pipeline run hides them.

`--verbosity=N` with N >= 0 (absl's flag, also `-v N`) or `WTL_DEBUG=1` shows everything, as without this module.
"""
import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

_QUIET = False


def _verbosity_from_argv(argv):
  for i, arg in enumerate(argv):
    match = re.fullmatch(r'--?(?:verbosity|v)(?:=(-?\d+))?', arg)
    if match:
      value = match.group(1) if match.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else '')
      try:
        return int(value)
      except ValueError:
        return None
  return None


def quiet(verbosity=None) -> bool:
  """Hides other libraries' console output unless verbosity >= 0 or WTL_DEBUG is set; returns True if it did.

  `verbosity` defaults to absl's --verbosity/-v flag in sys.argv (absl parses flags only after the imports this must
  precede). Safe to call more than once.
  """
  global _QUIET
  if verbosity is None:
    verbosity = _verbosity_from_argv(sys.argv[1:])
  if os.environ.get('WTL_DEBUG') or (verbosity is not None and verbosity >= 0):
    return False
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'  # Not setdefault: the common advice "=2" still shows E0000 cuInit.
  os.environ['PYTHONWARNINGS'] = 'ignore'  # For child processes (Beam workers, tool subprocesses).
  warnings.simplefilter('ignore')
  # Global, so that absl's verbosity flag or a library resetting levels cannot undo it. ERROR too: gin logs its
  # include-path probing at ERROR on the root logger, Beam a failed step before the exception carrying it.
  logging.disable(logging.ERROR)
  _QUIET = True
  if 'tensorflow' not in sys.modules:
    with muted_stderr(replay_on_error=True):
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  return True


def is_quiet() -> bool:
  return _QUIET


@contextlib.contextmanager
def muted_stderr(replay_on_error=False):
  """Points file descriptor 2 (C++ code, child processes) at a temporary file for the block, then discards it.

  With replay_on_error, what was written is copied to the real stderr if the block raises.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:  # Already unlinked: nothing is left behind.
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      if replay_on_error:
        sys.stderr.flush()
        sink.seek(0)
        os.write(saved, sink.read())
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


def parse_command_line(flag_values, argv, doc: str):
  """Parses argv (argv[0] is the program) into an absl FlagValues; returns the positional arguments.

  `-h`/`--help` prints `doc` and the flags and exits 0; a bad flag raises ConfigError (one line from the caller).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from wtl_tf.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if any(a in ('-h', '--help', '--helpfull', '--helpshort') for a in argv[1:]):
    print(doc.strip() + '\n\nflags:\n' + flag_values.get_help(include_special_flags=False))
    sys.exit(0)
  try:
    return flag_values(list(argv))[1:]
  except flags.Error as e:
    raise ConfigError(str(e)) from None
