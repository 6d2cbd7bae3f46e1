"""The run directory shared by every experiment and by OSAKA's pre-training cache.

    .lock                      held (fcntl.flock) by the one process that writes here; a second one is refused
    operative_config.gin       gin's operative config, written after building and before the first step
    checkpoints/last.json      the progress, and the name of the state file it goes with (written last)
    checkpoints/last-*.npz     the arrays of that checkpoint
    results.json               the final results; a run whose results.json parses is finished

Every file is written through a fresh temporary file in its directory and renamed over the target, so a reader (or
a resumed run) sees the old or the new content, never a mix. A checkpoint writes its arrays under a new name first
and then the pointer, so weights and progress commit together. The pointer also records the run's identity (the
bindings that define it); resuming under other bindings is a WorkdirError that names them.

Write failures (a file where the directory should be, no permission, a full disk) are WorkdirErrors and leave no
temporary file behind.
"""
import contextlib
import dataclasses
import errno
import fcntl
import functools
import inspect
import json
import os
import re
import secrets
import tempfile
from typing import Callable, Dict, Optional, Tuple

import gin
import numpy as np

from wtl_tf.errors import WorkdirError

USE_GIN = False  # Set by main.py: the run is configured by gin, whose operative config is then its identity.
# Parameters that may change on resume: they change neither the learned weights nor the scores (eval_tasks only
# decides which entries of the continual accuracy matrix are filled in).
VOLATILE = ('show_progress', 'eval_tasks')
TMP_SUFFIX = '.wtl-tmp'


def _after_state_write():
  """Fault-injection hook: called between a checkpoint's state file and its pointer (tests make it raise)."""


_held: Dict[str, list] = {}  # Real path of a lock file -> [fd, depth]: the lock is re-entrant within a process.


def _workdir_error(path: str, e: OSError) -> WorkdirError:
  reason = {errno.EEXIST: 'it exists and is not a directory', errno.ENOTDIR: 'a parent is not a directory'}.get(
      e.errno, e.strerror or str(e))
  return WorkdirError(f'cannot write to {path}: {reason}; use another --workdir')


class RunDir:
  """A run directory (see the module docstring). `writer=False` (non-chief workers) never writes."""

  def __init__(self, path: str, writer: bool = True):
    self.path, self.writer = path, writer
    self.identity: Optional[Dict[str, str]] = None

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @contextlib.contextmanager
  def lock(self, wait: bool = False):
    """Creates the directory and holds its lock; another process holding it is a WorkdirError (or waited for)."""
    if not self.writer:
      yield self
      return
    key = os.path.realpath(self.file('.lock'))
    if key not in _held:
      _held[key] = [self._acquire(key, wait), 0]
    _held[key][1] += 1
    try:
      yield self
    finally:
      _held[key][1] -= 1
      if not _held[key][1]:
        self._release(key)

  def _acquire(self, key: str, wait: bool) -> int:
    try:
      os.makedirs(self.path, exist_ok=True)
      fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise _workdir_error(self.path, e) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      os.close(fd)
      raise WorkdirError(f'{self.path} is in use by another process (it holds {key}); wait for it to finish or use '
                         'another --workdir') from None
    try:
      self._remove_stale_temporaries()
      probe_fd, probe = tempfile.mkstemp(dir=self.path, suffix=TMP_SUFFIX)  # Writable?
      os.close(probe_fd)
      os.remove(probe)
    except OSError as e:
      os.close(fd)
      raise _workdir_error(self.path, e) from None
    return fd

  @staticmethod
  def _release(key):
    os.close(_held.pop(key)[0])  # Closing the descriptor releases the flock.

  def _remove_stale_temporaries(self):
    """Temporary files of a killed writer (only the lock holder calls this)."""
    for directory in (self.path, self.file('checkpoints')):
      for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name.endswith(TMP_SUFFIX):
          os.remove(os.path.join(directory, name))

  def _write_atomic(self, name: str, write: Callable):
    target = self.file(name)
    directory = os.path.dirname(target)
    tmp = None
    try:
      os.makedirs(directory, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(target)}.', suffix=TMP_SUFFIX)
      with os.fdopen(fd, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, target)
    except BaseException as e:
      if tmp is not None:
        with contextlib.suppress(OSError):
          os.remove(tmp)
      if isinstance(e, OSError):
        raise WorkdirError(f'cannot write {target}: {e.strerror or e}; free space or use another --workdir') from None
      raise

  def write_text_atomic(self, name: str, text: str):
    if self.writer:
      self._write_atomic(name, lambda f: f.write(text.encode('utf-8')))

  def write_json_atomic(self, name: str, value, indent: Optional[int] = 1, sort_keys: bool = False):
    self.write_text_atomic(name, json.dumps(value, indent=indent, sort_keys=sort_keys))

  def write_npz_atomic(self, name: str, arrays: Dict[str, np.ndarray], compressed: bool = False):
    if self.writer:
      self._write_atomic(name, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))

  def read_json(self, name: str):
    """The parsed file, or None if it is missing or unreadable (e.g. truncated by a writer outside this module)."""
    try:
      with open(self.file(name), encoding='utf-8') as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def read_npz(self, name: str) -> Dict[str, np.ndarray]:
    with np.load(self.file(name)) as data:
      return dict(data)

  def results(self) -> Optional[dict]:
    """results.json, or None if there is none or it does not parse (then the run is not finished)."""
    return self.read_json('results.json')

  def write_results(self, result: dict, **json_options):
    self.write_json_atomic('results.json', result, **json_options)

  def save_checkpoint(self, state: Dict[str, np.ndarray], progress: dict, name: str = 'checkpoints/last'):
    """Writes `state` under a fresh name, then the pointer <name>.json (progress, identity, state file) atomically."""
    if not self.writer:
      return
    directory, base = os.path.split(name)
    state_file = f'{base}-{secrets.token_hex(4)}.npz'
    self.write_npz_atomic(os.path.join(directory, state_file), state)
    _after_state_write()
    pointer = dict(progress, state_file=state_file)
    if self.identity is not None:
      pointer['identity'] = self.identity
    self.write_json_atomic(f'{name}.json', pointer, indent=None)
    for other in os.listdir(self.file(directory)):  # Older state files are no longer referenced.
      if other.startswith(f'{base}-') and other.endswith('.npz') and other != state_file:
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(self.file(directory), other))

  def load_checkpoint(self, name: str = 'checkpoints/last') -> Optional[Tuple[Dict[str, np.ndarray], dict]]:
    """(state, progress) of the last checkpoint, or None; checks the identity (see check_identity) first."""
    if not os.path.exists(self.file(f'{name}.json')):
      return None
    progress = self.read_json(f'{name}.json')
    if not isinstance(progress, dict):
      raise WorkdirError(f'{self.file(name + ".json")} is unreadable; delete {self.file(os.path.dirname(name))} to '
                         'start this run over')
    recorded = progress.pop('identity', None)
    if self.identity is not None:
      _compare(self.path, recorded, self.identity)
    state_file = progress.pop('state_file', f'{os.path.basename(name)}.npz')  # Older runs: last.npz.
    return self.read_npz(os.path.join(os.path.dirname(name), state_file)), progress

  def resume(self, learner) -> Optional[dict]:
    """Restores the learner from the last checkpoint and returns its progress; None when there is none."""
    loaded = self.load_checkpoint()
    if loaded is None:
      return None
    learner.restore(loaded[0])
    return loaded[1]

  def check_identity(self, identity: Dict[str, str], checkpoint: str = 'checkpoints/last'):
    """Records the run's identity (saved with every checkpoint) and refuses a checkpoint made under another one."""
    self.identity = {k: v for k, v in identity.items() if k.rsplit('.', 1)[-1] not in VOLATILE}
    recorded = self.read_json(f'{checkpoint}.json')
    if isinstance(recorded, dict):
      _compare(self.path, recorded.get('identity'), self.identity)

  def write_operative_config(self):
    """operative_config.gin (runs configured by gin, see USE_GIN)."""
    if USE_GIN:
      self.write_text_atomic('operative_config.gin', gin.operative_config_str())


def _compare(path: str, recorded, current: Dict[str, str]):
  if recorded is None or recorded == current:
    return
  if not isinstance(recorded, dict):
    recorded = {}
  keys = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
  shown = '; '.join(f'{k}: {recorded.get(k, "(unset)")} -> {current.get(k, "(unset)")}' for k in keys[:6])
  more = f' and {len(keys) - 6} more' if len(keys) > 6 else ''
  raise WorkdirError(f'{path} holds a checkpoint of a run with other settings ({shown}{more}); rerun with the '
                     'original settings or use another --workdir')



def gin_bindings() -> Dict[str, str]:
  """gin's operative config as {'scope/configurable.parameter' or macro: value}."""
  bindings, current = {}, None
  for line in gin.operative_config_str().splitlines():
    if not line.strip() or line.startswith('#') or line.startswith('import '):
      continue
    match = re.match(r'^(\S+) = (.*)$', line)
    if match and not line[0].isspace():
      current = match.group(1)
      bindings[current] = match.group(2)
    elif current is not None:  # A value pretty-printed over several lines.
      bindings[current] += ' ' + line.strip()
  return bindings


_SKIP = object()


def describe(obj):
  """A JSON-able description of a configuration object: plain values as they are, objects by their class and every
  public attribute (vars()), dataclasses by their fields, optimizers by get_config(); tensors, arrays, models and
  compiled functions are left out (describe weights separately)."""
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  if isinstance(obj, (np.integer, np.floating, np.bool_)):
    return obj.item()
  if isinstance(obj, (list, tuple)):
    return [d for d in map(describe, obj) if d is not _SKIP]
  if isinstance(obj, dict):
    return {str(k): d for k, d in ((k, describe(v)) for k, v in obj.items()) if d is not _SKIP}
  if isinstance(obj, functools.partial):
    return {'partial': describe(obj.func), 'args': describe(obj.args), 'keywords': describe(obj.keywords)}
  if isinstance(obj, type) or inspect.isroutine(obj):
    return f'{obj.__module__}.{obj.__qualname__}'
  module = type(obj).__module__ or ''
  if hasattr(obj, 'get_config') and module.startswith('keras') and 'optimizer' in module:
    config = {k: v for k, v in obj.get_config().items() if k != 'name'}
    return {'class': type(obj).__name__, **describe(config)}
  if isinstance(obj, np.ndarray) or module.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'numpy'):
    return _SKIP
  if dataclasses.is_dataclass(obj):
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
  elif hasattr(obj, '__dict__'):
    fields = {k: v for k, v in vars(obj).items()  # Not private state, nor methods replaced on the instance.
              if not k.startswith('_') and not (callable(v) and hasattr(type(obj), k))}
  else:
    return type(obj).__qualname__
  return {'class': f'{module}.{type(obj).__qualname__}', **describe(fields)}


def flat(description, prefix: str = '') -> Dict[str, str]:
  """{'a.b.c': json value} from a nested description (the keys name what differs on resume)."""
  if isinstance(description, dict) and description:
    out = {}
    for k, v in description.items():
      out.update(flat(v, f'{prefix}.{k}' if prefix else k))
    return out
  return {prefix: json.dumps(description, sort_keys=True)}


def identity(explicit: Dict[str, object]) -> Dict[str, str]:
  """The bindings that define a run: gin's operative config if gin configured it (USE_GIN), else `explicit` described
  (library callers; build the learners first, so that their description is complete)."""
  return gin_bindings() if USE_GIN else flat(describe(explicit))
