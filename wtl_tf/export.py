"""Exports what a run learned as a SavedModel that needs TensorFlow alone (no wtl_tf, no Keras objects).

    python -m wtl_tf.export --run_dir=RUN --output_dir=OUT [--checkpoint=best|last] [--inner_steps=K]
    wtl_tf.export_saved_model(learner_or_run_dir, 'OUT', inner_steps=...)   # the same from Python

Signatures (also callable as methods of the loaded object):
  adapt_and_predict(support_x [n, *input], support_y [n] int32, query_x [m, *input]) -> {'logits': [m, ways]}
      K inner SGD steps phi <- phi - c * S(m) * grad from theta on the support set (cross-entropy), then the query
      forward pass: the learner's own evaluation inner loop.
  predict(x [m, *input]) -> {'logits': [m, ways]}      the forward pass at theta (no adaptation)
  step_sizes() -> {group name: c * S(m)}               per parameter tensor, 0 where a tensor does not adapt

Batch sizes are dynamic. BatchNorm uses the statistics of the batch it is given (the support set while adapting, the
query batch when predicting), exactly as in training and evaluation. The signatures check their inputs in the graph:
a wrong image size or channel count, a label outside [0, ways) or an empty support set fails with an
InvalidArgumentError naming it (the loaded object's methods refuse a wrong shape before that, with a TypeError that
names the expected TensorSpec).
wtl_tf_export.json beside the SavedModel records the input shape, ways, K, the group names and the source run.
sparse-MAML+ is refused: its masks are drawn afresh for each task, so no fixed S(m) exists to export.
"""
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence

if __name__ == '__main__':
  from wtl_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet()  # Before TensorFlow starts.

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from wtl_tf import inner_loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf import modulation as modulation_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from wtl_tf.errors import ConfigError, WorkdirError  # pylint: disable=g-import-not-at-top,wrong-import-position

METADATA = 'wtl_tf_export.json'


def _names(learner):
  """Unique, signature-safe names of theta's tensors, e.g. conv2d_1/kernel."""
  return [info.name for info in learner.infos]


class _Exported(tf.Module):
  """theta, the non-trainable state and the step sizes as variables; the model lives only in the traced graphs."""

  def __init__(self, learner, input_shape: Sequence[int], ways: int, inner_steps: int):
    super().__init__(name='wtl_tf_export')
    model = learner.model
    theta = learner.read(learner.theta)
    sizes = learner.step_sizes(learner.read(learner.mask_logits), learner.noise_key(0, 0))
    self.theta = [tf.Variable(t, trainable=False, name=f'theta_{i}') for i, t in enumerate(theta)]
    self.non_trainable = [tf.Variable(t, trainable=False, name=f'state_{i}')
                          for i, t in enumerate(learner.read(learner.non_trainable))]
    self.sizes = [tf.Variable(tf.broadcast_to(tf.cast(s if s is not None else 0.0, t.dtype), t.shape),
                              trainable=False, name=f'step_size_{i}') for i, (s, t) in enumerate(zip(sizes, theta))]
    adapted = [s is not None for s in sizes]
    names = _names(learner)
    shape = [int(d) for d in input_shape]
    x_spec = lambda name: tf.TensorSpec([None] + shape, tf.float32, name=name)
    shape_text = f'[n, {", ".join(map(str, shape))}]'

    def check_inputs(x, what):
      return tf.debugging.assert_equal(tf.shape(x)[1:], tf.constant(shape, tf.int32),
                                       message=f'{what} must have the shape {shape_text} (n any): wrong image size or '
                                               'channel count')

    def forward(params, x):
      return inner_loop.forward(model, params, [v.read_value() for v in self.non_trainable], x)

    def adapt_and_predict(support_x, support_y, query_x):
      checks = [check_inputs(support_x, 'support_x'), check_inputs(query_x, 'query_x'),
                tf.debugging.assert_positive(tf.shape(support_x)[0], message='the support set is empty'),
                tf.debugging.assert_equal(tf.shape(support_y)[0], tf.shape(support_x)[0],
                                          message='support_y must have one label per support_x image'),
                tf.debugging.assert_non_negative(support_y, message=f'support_y must lie in [0, {ways})'),
                tf.debugging.assert_less(support_y, tf.constant(ways, support_y.dtype),
                                         message=f'support_y must lie in [0, {ways})')]
      with tf.control_dependencies(checks):
        support_x, query_x = tf.identity(support_x), tf.identity(query_x)
      params = [v.read_value() for v in self.theta]
      step = [v.read_value() if a else None for v, a in zip(self.sizes, adapted)]
      fast = inner_loop.adapt(model, params, [v.read_value() for v in self.non_trainable], step, support_x,
                              support_y, inner_steps, first_order=True)
      return {'logits': forward(fast, query_x)}

    def predict(x):
      with tf.control_dependencies([check_inputs(x, 'x')]):
        x = tf.identity(x)
      return {'logits': forward([v.read_value() for v in self.theta], x)}

    def step_sizes():
      return {name: v.read_value() for name, v in zip(names, self.sizes)}

    self.adapt_and_predict = tf.function(adapt_and_predict, input_signature=[
        x_spec('support_x'), tf.TensorSpec([None], tf.int32, name='support_y'), x_spec('query_x')])
    self.predict = tf.function(predict, input_signature=[x_spec('x')])
    self.step_sizes = tf.function(step_sizes, input_signature=[])


def export(source, output_dir: str, input_shape: Optional[Sequence[int]] = None, ways: Optional[int] = None,
           inner_steps: Optional[int] = None, checkpoint: str = 'best', learner_name: Optional[str] = None) -> Dict:
  """Writes the SavedModel of a learner or of a run directory's learner to `output_dir`; returns its metadata.

  Args:
    source: a run directory (few-shot or online; its learner is rebuilt and restored, wtl_tf/saved_run.py) or a
      learner object (e.g. from `wtl_tf.fewshot_learner`).
    output_dir: a new (or empty) directory; written atomically (a temporary directory renamed at the end).
    input_shape: one input's shape without the batch axis; default the run's (or the model's declared input).
    ways: the number of logits (default the model's output size).
    inner_steps: K of adapt_and_predict; default the learner's evaluation inner loop.
    checkpoint: for a run directory, 'best' (few-shot best validation, else last) or 'last'.
    learner_name: for a run directory holding several learners.
  """
  meta = {'source': None, 'checkpoint': None}
  if isinstance(source, (str, os.PathLike)):
    from wtl_tf import saved_run  # pylint: disable=g-import-not-at-top
    run = saved_run.load_run(os.fspath(source), learner_name=learner_name, checkpoint=checkpoint)
    learner = run.learner
    input_shape = input_shape or run.input_shape
    ways = ways or run.ways
    inner_steps = run.inner_steps if inner_steps is None else inner_steps
    meta.update(source=os.path.abspath(run.run_dir), checkpoint=run.checkpoint, setting=run.setting)
  else:
    learner = source
  if isinstance(learner.modulation, modulation_lib.NoisyBinaryMask):
    raise ConfigError('sparse-MAML+ draws fresh masks for every task, so it has no fixed S(m) to export')
  if input_shape is None:
    input_shape = tuple(int(d) for d in learner.model.inputs[0].shape[1:])
  if inner_steps is None:
    loop = getattr(learner, 'eval_inner_loop', None) or getattr(learner, 'inner_loop', None)
    if loop is None:
      raise ConfigError(f'{learner.name} has no inner loop: pass inner_steps')
    inner_steps = loop.num_steps
  if ways is None:
    ways = int(inner_loop.forward(learner.model, learner.read(learner.theta), learner.read(learner.non_trainable),
                                  tf.zeros((2,) + tuple(input_shape))).shape[-1])
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
    raise WorkdirError(f'{output_dir} exists and is not an empty directory: choose a new --output_dir')
  module = _Exported(learner, input_shape, int(ways), int(inner_steps))
  sizes = module.step_sizes()
  meta.update(learner=learner.name, modulation=repr(learner.modulation), input_shape=list(map(int, input_shape)),
              ways=int(ways), inner_steps=int(inner_steps), groups=list(sizes),
              adapted_fraction={k: float(np.mean(v.numpy() != 0)) for k, v in sizes.items()},
              signatures=['adapt_and_predict', 'predict', 'step_sizes'])
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.export-', dir=parent)
  try:
    tf.saved_model.save(module, tmp, signatures={'adapt_and_predict': module.adapt_and_predict,
                                                 'predict': module.predict, 'step_sizes': module.step_sizes})
    with open(os.path.join(tmp, METADATA), 'w', encoding='utf-8') as f:
      json.dump(meta, f, indent=1)
    if os.path.isdir(output_dir):
      os.rmdir(output_dir)  # Empty (checked above).
    os.replace(tmp, output_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return meta


def main(argv=None):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from wtl_tf import console, errors  # pylint: disable=g-import-not-at-top
  defs = flags.FlagValues()
  flags.DEFINE_string('run_dir', None, 'The run directory to export (few-shot or online).', flag_values=defs)
  flags.DEFINE_string('output_dir', None, 'Where the SavedModel goes (a new or empty directory).', flag_values=defs)
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'last'], 'best: the best-validation weights (few-shot), else last.',
                    flag_values=defs)
  flags.DEFINE_integer('inner_steps', None, 'K of adapt_and_predict (default: the run\'s evaluation K).',
                       flag_values=defs)
  flags.DEFINE_string('learner', None, 'For a run with several learners: which one.', flag_values=defs)

  def run():
    console.parse_command_line(defs, sys.argv if argv is None else ['export'] + list(argv), __doc__)
    if not defs.run_dir or not defs.output_dir:
      raise ConfigError('--run_dir and --output_dir are required')
    if defs.inner_steps is not None and defs.inner_steps < 0:
      raise ConfigError(f'--inner_steps must be >= 0, got {defs.inner_steps}')
    meta = export(defs.run_dir, defs.output_dir, inner_steps=defs.inner_steps, checkpoint=defs.checkpoint,
                  learner_name=defs.learner)
    adapted = sum(1 for v in meta['adapted_fraction'].values() if v)
    print(f'exported {meta["learner"]} ({meta["setting"]}, {meta["checkpoint"]} checkpoint) to {defs.output_dir}: '
          f'input {tuple(meta["input_shape"])}, {meta["ways"]} ways, K = {meta["inner_steps"]}, {adapted} of '
          f'{len(meta["groups"])} tensors adapt; signatures {", ".join(meta["signatures"])}')
    return meta
  return errors.report_user_errors(run)


if __name__ == '__main__':
  main()
