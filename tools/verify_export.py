"""Checks an exported few-shot SavedModel against its run: same test accuracy on fixed test episodes, same logits.

  python tools/verify_export.py --run_dir=RUN --export_dir=OUT [--episodes=100]

The run's learner is rebuilt and restored (its best checkpoint, as in the run's final test) and tested here on the
first N episodes of the run's fixed final test set, with the run's own evaluation code. The same episodes go to a
fresh Python process that imports TensorFlow but cannot import wtl_tf, loads OUT and calls adapt_and_predict on each.
Prints both accuracies and the largest logit difference; exits 1 when the accuracies differ by more than
--tolerance points.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if __name__ == '__main__':
  from wtl_tf import console  # pylint: disable=g-import-not-at-top,wrong-import-position
  console.quiet()

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('run_dir', None, 'A few-shot run directory.')
flags.DEFINE_string('export_dir', None, 'Its SavedModel (python -m wtl_tf.export).')
flags.DEFINE_integer('episodes', 100, 'How many fixed test episodes.')
flags.DEFINE_float('tolerance', 0.1, 'Largest accepted accuracy difference, in points.')
FLAGS = flags.FLAGS

# Runs in a process where `import wtl_tf` fails: the SavedModel alone must do the work.
PLAIN_TF = '''
import sys
sys.modules["wtl_tf"] = None
import numpy as np, tensorflow as tf
episodes = np.load(sys.argv[1])
model = tf.saved_model.load(sys.argv[2])
logits = [model.adapt_and_predict(tf.constant(sx), tf.constant(sy.astype(np.int32)), tf.constant(qx))["logits"].numpy()
          for sx, sy, qx in zip(episodes["support_x"], episodes["support_y"], episodes["query_x"])]
np.save(sys.argv[3], np.stack(logits))
'''


def verify(run_dir, export_dir, num_episodes, tolerance):
  """{'run_accuracy', 'export_accuracy', 'difference_points', 'max_logit_difference', 'episodes'}."""
  from wtl_tf import api, saved_run  # pylint: disable=g-import-not-at-top
  from wtl_tf.experiments import fewshot  # pylint: disable=g-import-not-at-top
  run = saved_run.load_run(run_dir)
  built = run.built
  with tempfile.TemporaryDirectory() as tmp:
    fixed = built['data'].split(built['test_split'], built['ways'], built['shots'], built['queries']).fixed(
        built['eval_seed'], num_episodes, tmp)
    ours = fewshot.evaluate(run.learner, fixed, built['eval_batch_size'], 'eval')
    arrays = {k: [] for k in ('support_x', 'support_y', 'query_x', 'query_y')}
    for tasks, _ in fixed.dataset(np.arange(num_episodes), 1):
      for key, value in zip(arrays, tasks):
        arrays[key].append(value.numpy()[0])
    arrays = {k: np.stack(v) for k, v in arrays.items()}
    reference = np.stack([api.adapt_and_predict(run.learner, sx, sy, qx).numpy() for sx, sy, qx in zip(
        arrays['support_x'], arrays['support_y'], arrays['query_x'])])
    np.savez(os.path.join(tmp, 'episodes.npz'), **arrays)
    out = os.path.join(tmp, 'logits.npy')
    proc = subprocess.run([sys.executable, '-c', PLAIN_TF, os.path.join(tmp, 'episodes.npz'), export_dir, out],
                          capture_output=True, text=True, cwd=tmp, check=False)
    if proc.returncode:
      raise RuntimeError(f'the plain-TensorFlow process failed:\n{proc.stderr[-3000:]}')
    exported = np.load(out)
  export_acc = float(np.mean(np.argmax(exported, -1) == arrays['query_y']))
  result = {'episodes': num_episodes, 'run_accuracy': float(ours['accuracy']), 'export_accuracy': export_acc,
            'difference_points': 100 * abs(export_acc - float(ours['accuracy'])),
            'max_logit_difference': float(np.abs(exported - reference).max()),
            'max_logit': float(np.abs(reference).max()), 'tolerance_points': tolerance}
  result['ok'] = result['difference_points'] <= tolerance
  return result


def main(argv):
  del argv
  from wtl_tf import errors  # pylint: disable=g-import-not-at-top
  if not FLAGS.run_dir or not FLAGS.export_dir:
    print('error: --run_dir and --export_dir are required', file=sys.stderr)
    sys.exit(2)
  result = errors.report_user_errors(lambda: verify(FLAGS.run_dir, FLAGS.export_dir, FLAGS.episodes,
                                                    FLAGS.tolerance))
  print(f'{result["episodes"]} fixed test episodes: run {100 * result["run_accuracy"]:.2f} %, SavedModel in plain '
        f'TensorFlow {100 * result["export_accuracy"]:.2f} % (difference {result["difference_points"]:.2f} points, '
        f'tolerance {FLAGS.tolerance}); largest logit difference {result["max_logit_difference"]:.2e} '
        f'(logits up to {result["max_logit"]:.1f})')
  print(json.dumps(result))
  sys.exit(0 if result['ok'] else 1)


if __name__ == '__main__':
  app.run(main)
