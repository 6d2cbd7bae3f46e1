"""wtl_tf: learning where to learn (sparse-MAML and its family) in TensorFlow/Keras.

The public API is importable from here (`import wtl_tf; wtl_tf.fewshot_learner(...)`); see wtl_tf/api.py and the
README. Names are resolved on first use, so `import wtl_tf` itself does not start TensorFlow (the command-line
entry points quiet TensorFlow's logging before it starts).
"""
import importlib

# Public name: (module, attribute).
_EXPORTS = {
    'fewshot_learner': ('wtl_tf.api', 'fewshot_learner'),
    'meta_train': ('wtl_tf.api', 'meta_train'),
    'evaluate': ('wtl_tf.api', 'evaluate'),
    'adapt_and_predict': ('wtl_tf.api', 'adapt_and_predict'),
    'get_modulation': ('wtl_tf.api', 'get_modulation'),
    'as_episodes': ('wtl_tf.api', 'as_episodes'),
    'LEARNERS': ('wtl_tf.api', 'LEARNERS'),
    'Episode': ('wtl_tf.data.episodes', 'Episode'),
    'FewShotLearner': ('wtl_tf.learners.fewshot', 'FewShotLearner'),
    'LaMAML': ('wtl_tf.learners.continual.lamaml', 'LaMAML'),
    'ContinualMAML': ('wtl_tf.learners.online.cmaml', 'ContinualMAML'),
    'LearnerCore': ('wtl_tf.learners.core', 'LearnerCore'),
    'InnerLoop': ('wtl_tf.inner_loop', 'InnerLoop'),
    'adapt': ('wtl_tf.inner_loop', 'adapt'),
    'forward': ('wtl_tf.inner_loop', 'forward'),
    'Modulation': ('wtl_tf.modulation', 'Modulation'),
    'Identity': ('wtl_tf.modulation', 'Identity'),
    'FixedSubset': ('wtl_tf.modulation', 'FixedSubset'),
    'BinaryMask': ('wtl_tf.modulation', 'BinaryMask'),
    'ScaledBinaryMask': ('wtl_tf.modulation', 'ScaledBinaryMask'),
    'ReluStraightThrough': ('wtl_tf.modulation', 'ReluStraightThrough'),
    'Relu': ('wtl_tf.modulation', 'Relu'),
    'Linear': ('wtl_tf.modulation', 'Linear'),
    'Exp': ('wtl_tf.modulation', 'Exp'),
    'NoisyBinaryMask': ('wtl_tf.modulation', 'NoisyBinaryMask'),
    'MaskInit': ('wtl_tf.modulation', 'MaskInit'),
    'sparsity': ('wtl_tf.modulation', 'sparsity'),
    'export_saved_model': ('wtl_tf.export', 'export'),
    'load_run': ('wtl_tf.saved_run', 'load_run'),
    'UserError': ('wtl_tf.errors', 'UserError'),
    'ConfigError': ('wtl_tf.errors', 'ConfigError'),
    'TrainingDiverged': ('wtl_tf.errors', 'TrainingDiverged'),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f'module wtl_tf has no attribute {name!r}')
  module, attribute = _EXPORTS[name]
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value
  return value


def __dir__():
  return __all__
