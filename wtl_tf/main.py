"""Entry point: python -m wtl_tf.main --gin_file=... [--gin_param=...] --workdir=DIR."""
import logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # pylint: disable=g-import-not-at-top
import gin  # pylint: disable=g-import-not-at-top

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin')
flags.DEFINE_multi_string('gin_file', [os.path.join(GIN_DIR, 'quickstart.gin')], 'Gin config files.')
flags.DEFINE_multi_string('gin_param', [], 'Gin bindings, e.g. "demo.num_steps=10".')
flags.DEFINE_string('workdir', 'runs/quickstart', 'Run directory (config, logs, results).')
FLAGS = flags.FLAGS


class ConfigError(Exception):
  """A problem with the gin configuration, reported as one paragraph."""


@gin.configurable('main')
def selected_experiment(experiment=gin.REQUIRED):
  """The experiment function a gin file chose (`main.experiment = @run_continual`); called with workdir=."""
  return experiment


def _register_configurables():
  # pylint: disable=g-import-not-at-top,unused-import
  import wtl_tf.demo
  import wtl_tf.distribute
  import wtl_tf.experiments.continual
  import wtl_tf.experiments.fewshot
  import wtl_tf.data.fewshot
  import wtl_tf.experiments.online
  import wtl_tf.experiments.online_pretrain
  import wtl_tf.learners.online.cmaml
  import wtl_tf.learners.continual.baselines
  import wtl_tf.learners.fewshot
  import wtl_tf.learners.continual.lamaml
  import wtl_tf.learners.online.baselines
  import wtl_tf.models.conv4
  import wtl_tf.models.mlp
  import wtl_tf.models.resnet12
  import wtl_tf.modulation
  import wtl_tf.optimizers


def parse_config(gin_files, gin_params):
  """Parses gin files and bindings; every problem becomes a one-paragraph ConfigError."""
  _register_configurables()
  # gin logs a spurious ERROR while probing include paths on the Python path before its search path.
  logging.getLogger('gin.resource_reader').setLevel(logging.CRITICAL)
  gin.add_config_file_search_path(GIN_DIR)
  for path in gin_files:
    if not os.path.exists(path) and not os.path.exists(os.path.join(GIN_DIR, path)):
      raise ConfigError(f'Gin file not found: {path}. Pass an existing file with --gin_file (see gin/).')
  try:
    gin.parse_config_files_and_bindings(gin_files, gin_params, skip_unknown=False)
  except Exception as e:  # gin raises ValueError, SyntaxError-like ParseError, ImportError...
    raise ConfigError(f'Invalid gin configuration: {e}'.replace('\n', ' ')) from None


def main(argv):
  del argv
  try:
    parse_config(FLAGS.gin_file, FLAGS.gin_param)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    from wtl_tf.data.records import DataError  # pylint: disable=g-import-not-at-top
    try:
      result = selected_experiment()(workdir=FLAGS.workdir)
    except RuntimeError as e:
      if 'Required bindings' in str(e) or 'No values supplied' in str(e):
        raise ConfigError(f'Missing required gin value: {e}'.replace('\n', ' ')) from None
      raise
    except (ValueError, DataError) as e:  # Out-of-range settings, missing or bad data: no results are written.
      if os.environ.get('WTL_DEBUG'):
        raise
      raise ConfigError(str(e).replace('\n', ' ')) from None
    with open(os.path.join(FLAGS.workdir, 'operative_config.gin'), 'w', encoding='utf-8') as f:
      f.write(gin.operative_config_str())
  except ConfigError as e:
    print(f'error: {e} (set WTL_DEBUG=1 for a traceback)', file=sys.stderr)
    sys.exit(2)
  return result


if __name__ == '__main__':
  app.run(lambda argv: main(argv) and None)
