"""Run-directory logging: metrics.jsonl (one JSON object per logged step) and TensorBoard events.

Every record has `step`, `split`, `loss`, `accuracy` and `sparsity` ({group: fraction, 'overall': fraction}); extra
keys are allowed. TensorBoard gets the same numbers as scalars (`<split>/loss`, `<split>/accuracy`,
`sparsity/<group>`) plus histograms of S(m) and of m per group.
"""
import json
import math
import os
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf


def _plain(value):
  """JSON-safe numbers (numpy scalars, NaN as null)."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, (np.floating, float)):
    return None if math.isnan(float(value)) else float(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  return value


class Summaries:
  """Writes metrics.jsonl and TensorBoard events under `workdir` (appending, so resumed runs continue the file)."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._file = open(self.path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
    self._writer = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard')) if tensorboard else None

  def log(self, step: int, split: str, loss: Optional[float], accuracy: Optional[float],
          sparsity: Dict[str, float], **extra):
    record = {'step': int(step), 'split': split, 'loss': loss, 'accuracy': accuracy, 'sparsity': sparsity, **extra}
    self._file.write(json.dumps(_plain(record), sort_keys=True) + '\n')
    self._file.flush()
    if self._writer is None:
      return
    with self._writer.as_default(step=int(step)):
      for key, value in (('loss', loss), ('accuracy', accuracy)):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
          tf.summary.scalar(f'{split}/{key}', value)
      for group, value in sparsity.items():
        tf.summary.scalar(f'sparsity/{group}', value)
      for key, value in extra.items():
        if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
          tf.summary.scalar(f'{split}/{key}', float(value))

  def histograms(self, step: int, prefix: str, arrays: Dict[str, np.ndarray]):
    if self._writer is None:
      return
    with self._writer.as_default(step=int(step)):
      for name, values in arrays.items():
        tf.summary.histogram(f'{prefix}/{name}', np.asarray(values, np.float32).ravel())

  def close(self):
    self._file.close()
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()


def read_metrics(path: str):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]
