"""Opens a run directory as a learner: the run's own operative_config.gin rebuilds it, a checkpoint restores it.

Used by export (wtl_tf/export.py) and mask analysis (wtl_tf/analyze.py), in any setting:

  fewshot    the best-validation checkpoint (checkpoints/best.npz), else the last one; the episode shape and data.
  continual  the last checkpoint (after the last task) of each learner of the run.
  online     the last checkpoint of the stream (the meta-learned slow weights theta and masks).
"""
import dataclasses
import os
from typing import Dict, Optional, Tuple

import gin

from wtl_tf import rundir
from wtl_tf.errors import ConfigError, WorkdirError


@dataclasses.dataclass
class SavedRun:
  """A learner restored from a run directory.

  Attributes:
    run_dir: the run directory.
    setting: 'fewshot', 'continual' or 'online'.
    learner: the restored learner (a LearnerCore).
    checkpoint: which checkpoint was restored ('best' or 'last').
    input_shape: one input's shape, without the batch axis.
    ways: the number of logits.
    inner_steps: K of the learner's evaluation inner loop (None for learners without one).
    built: what the experiment's build step returned (few-shot: data, ways, shots, queries, ...).
  """
  run_dir: str
  setting: str
  learner: object
  checkpoint: str
  input_shape: Tuple[int, ...]
  ways: int
  inner_steps: Optional[int]
  built: Dict[str, object]


def _experiment(config: str) -> str:
  for line in config.splitlines():
    if line.replace(' ', '').startswith('main.experiment=@'):
      return line.split('@', 1)[1].strip()
  raise ConfigError('operative_config.gin names no experiment (main.experiment)')


def load_run(run_dir: str, learner_name: Optional[str] = None, checkpoint: str = 'best') -> SavedRun:
  """Rebuilds the run's learner from its operative_config.gin and restores a checkpoint.

  Args:
    run_dir: a finished (or checkpointed) run directory of `python -m wtl_tf.main`.
    learner_name: continual runs with several learners (the quickstart): which one; its sub-directory holds the
      checkpoint.
    checkpoint: 'best' (few-shot: the best-validation weights, falling back to the last checkpoint) or 'last'.

  Raises:
    WorkdirError: not a run directory, or no checkpoint yet.
    CheckpointMismatch: the checkpoint does not fit the configuration.
  """
  from wtl_tf import main as wtl_main  # pylint: disable=g-import-not-at-top  (registers every configurable)
  path = os.path.join(run_dir, 'operative_config.gin')
  if not os.path.isfile(path):
    raise WorkdirError(f'{run_dir} is not a wtl_tf run directory (no operative_config.gin)')
  with open(path, encoding='utf-8') as f:
    config = f.read()
  experiment = _experiment(config)
  gin.clear_config()
  try:
    wtl_main.parse_config([], [config, f'{experiment}.build_only = True'])
    built = wtl_main.selected_experiment()(workdir=run_dir)
  finally:
    gin.clear_config()
  if experiment == 'run_fewshot':
    learner, setting = built['learner'], 'fewshot'
    input_shape, ways, steps = tuple(built['data'].image_shape), built['ways'], learner.eval_inner_loop.num_steps
  elif experiment == 'run_online':
    learner, setting = built['learner'], 'online'
    input_shape, ways, steps = tuple(built['image_shape']), None, learner.inner_loop.num_steps
  else:
    setting = 'continual'
    name = learner_name or next(iter(built))
    if name not in built:
      raise ConfigError(f'{run_dir} has the learners {", ".join(built)}, not {name!r}')
    learner = built[name]
    learner.name = name  # The run's name for it (the key of run_continual.learners), as in its results.
    if len(built) > 1:
      run_dir = os.path.join(run_dir, name)
    input_shape, ways, steps = None, None, None
  run = rundir.RunDir(run_dir)
  which = 'last'
  if checkpoint == 'best' and os.path.exists(run.file('checkpoints/best.npz')):
    learner.restore(run.read_npz('checkpoints/best.npz'))
    which = 'best'
  elif run.resume(learner) is None:
    raise WorkdirError(f'{run_dir} has no checkpoint yet')
  if input_shape is None:
    input_shape = tuple(int(d) for d in learner.model.inputs[0].shape[1:])
  if ways is None:
    ways = int(learner.model.outputs[0].shape[-1])
  return SavedRun(run_dir, setting, learner, which, input_shape, ways, steps, built)
