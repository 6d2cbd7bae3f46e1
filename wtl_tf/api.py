"""The Python API: meta-learn an initialisation and where to learn on your own Keras model and episodes, no gin.

    import wtl_tf
    learner = wtl_tf.fewshot_learner(model, modulation='sparse_maml', inner_steps=5, step_size=0.1)
    wtl_tf.meta_train(learner, train_episodes, steps=500, meta_batch_size=4)
    print(wtl_tf.evaluate(learner, test_episodes)['accuracy'], learner.sparsity()['overall'])

Episodes are the support and query sets of classification tasks, labels 0..ways-1, in one of two forms:
  * arrays with a leading episode axis: (support_x [N, S, ...], support_y [N, S], query_x [N, Q, ...], query_y [N, Q]),
    as a tuple, a dict with those keys or a `wtl_tf.Episode`;
  * a `tf.data.Dataset` whose elements are single episodes in the same form without the N axis (repeated as needed).
The model maps a batch of inputs [n, ...] to logits [n, ways]; any Keras 3 model (functional, sequential or
subclassed, with or without BatchNorm), built or given `input_shape`. Its BatchNorm layers always use the statistics
of the batch they see (support set while adapting, query set when predicting), as in MAML.
"""
from typing import Callable, Dict, Iterator, List, Optional, Union

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from wtl_tf import modulation as modulation_lib
from wtl_tf import optimizers
from wtl_tf.data.episodes import Episode
from wtl_tf.errors import ConfigError
from wtl_tf.experiments.fewshot import mean_ci95
from wtl_tf.inner_loop import InnerLoop
from wtl_tf.learners.fewshot import FewShotLearner

KEYS = ('support_x', 'support_y', 'query_x', 'query_y')
# name: (modulation factory given the step size c, second order by default, its mask learning rate).
LEARNERS = {
    'maml': (modulation_lib.Identity, True, None),
    'fomaml': (modulation_lib.Identity, False, None),
    'anil': (lambda c: modulation_lib.FixedSubset('head', c), False, None),
    'boil': (lambda c: modulation_lib.FixedSubset('body', c), False, None),
    'meta_sgd': (modulation_lib.Linear, False, 1e-3),
    'exp_maml': (modulation_lib.Exp, False, 0.0075),
    'sparse_maml': (modulation_lib.BinaryMask, False, 0.0075),
    'sparse_relu_maml': (lambda c: modulation_lib.ReluStraightThrough(
        c, modulation_lib.MaskInit(rule='constant', value=c)), False, 0.0075),
    'sparse_maml_plus': (modulation_lib.NoisyBinaryMask, False, 0.0075),
}
EpisodeSource = Union[tf.data.Dataset, Episode, tuple, dict]


def get_modulation(modulation: Union[str, modulation_lib.Modulation] = 'sparse_maml',
                   step_size: float = 0.1) -> modulation_lib.Modulation:
  """A modulation S(m) by learner name (see `LEARNERS`), or the `Modulation` object itself."""
  if isinstance(modulation, modulation_lib.Modulation):
    return modulation
  if modulation not in LEARNERS:
    raise ConfigError(f'unknown modulation {modulation!r}: use one of {", ".join(LEARNERS)} or a '
                      'wtl_tf.modulation.Modulation')
  return LEARNERS[modulation][0](step_size)


def fewshot_learner(model: Union[keras.Model, Callable[[], keras.Model]],
                    modulation: Union[str, modulation_lib.Modulation] = 'sparse_maml', inner_steps: int = 5,
                    step_size: float = 0.1, second_order: Optional[bool] = None, adapt_bn: bool = True,
                    learning_rate: float = 1e-3, mask_learning_rate: Optional[float] = None,
                    eval_inner_steps: Optional[int] = None, input_shape: Optional[tuple] = None, seed: int = 0,
                    name: Optional[str] = None, **kwargs) -> FewShotLearner:
  """A few-shot meta-learner over `model`: K modulated inner SGD steps, theta and m meta-learned with Adam.

  Args:
    model: a Keras model producing logits [n, ways], or a function that builds one (needed for tf.distribute: it is
      then called inside the strategy's scope).
    modulation: a name of `LEARNERS` ('sparse_maml', 'maml', 'anil', ...) or a `wtl_tf.modulation.Modulation`.
    inner_steps: K, the inner SGD steps while training.
    step_size: c, the inner learning rate (sparse-MAML: phi <- phi - c * step(m) * grad).
    second_order: differentiate through the inner gradients; default True for 'maml' only.
    adapt_bn: whether normalisation layers' scale and offset adapt (and get masks).
    learning_rate: Adam learning rate of theta.
    mask_learning_rate: Adam learning rate of m; default the modulation's usual one (0.0075, Meta-SGD 1e-3).
    eval_inner_steps: K when evaluating (default `inner_steps`).
    input_shape: the shape of one input (without the batch axis), to build a model that is not built yet.
    seed: seeds the mask initialisation (the model's own initialisation is yours).
    name: the learner's name in logs.
    **kwargs: passed on to `FewShotLearner` (e.g. strategy, jit_compile, clamp_outer_gradients).
  """
  label = modulation if isinstance(modulation, str) else type(modulation).__name__
  mod = get_modulation(modulation, step_size)
  default_order, default_mask_lr = (LEARNERS[modulation][1:] if isinstance(modulation, str) else (False, 0.0075))
  mask_lr = mask_learning_rate if mask_learning_rate is not None else (default_mask_lr or 0.0075)

  def model_fn():
    built = model() if callable(model) and not isinstance(model, keras.Model) else model
    if not isinstance(built, keras.Model):
      raise ConfigError(f'fewshot_learner needs a keras.Model (or a function returning one), got {type(built)}')
    if not built.built:
      if input_shape is None:
        raise ConfigError('the model is not built: call it once on a batch, or pass input_shape=(...)')
      built(tf.zeros((1,) + tuple(input_shape)))
    return built

  train_loop = InnerLoop(num_steps=inner_steps, adapt_bn=adapt_bn,
                         first_order=not (default_order if second_order is None else second_order))
  eval_loop = InnerLoop(num_steps=inner_steps if eval_inner_steps is None else eval_inner_steps, adapt_bn=adapt_bn)
  return FewShotLearner(model_fn, modulation=mod, inner_loop=train_loop, eval_inner_loop=eval_loop,
                        theta_optimizer=lambda: optimizers.adam(learning_rate=learning_rate),
                        mask_optimizer=lambda: optimizers.adam(learning_rate=mask_lr), seed=seed,
                        name=name or label, **kwargs)


def as_episodes(source: EpisodeSource) -> Episode:
  """Arrays with a leading episode axis as an `Episode` (support_images, support_labels, query_images, query_labels)."""
  if isinstance(source, dict):
    missing = [k for k in KEYS if k not in source]
    if missing:
      raise ConfigError(f'episodes need the keys {", ".join(KEYS)}; missing {", ".join(missing)}')
    source = tuple(source[k] for k in KEYS)
  if len(source) != 4:
    raise ConfigError(f'episodes are (support_x, support_y, query_x, query_y); got {len(source)} arrays')
  episode = Episode(*(np.asarray(a) for a in source))
  n = {len(a) for a in episode}
  if len(n) != 1 or 0 in n:
    raise ConfigError(f'episodes need the same non-zero number of episodes in every array, got {[len(a) for a in episode]}')
  for x, y, which in ((episode.support_images, episode.support_labels, 'support'),
                      (episode.query_images, episode.query_labels, 'query')):
    if y.ndim != 2 or x.shape[:2] != y.shape:
      raise ConfigError(f'{which} inputs {x.shape} and labels {y.shape} do not match: want [N, n, ...] and [N, n]')
    if x.shape[1] == 0:
      raise ConfigError(f'the {which} sets are empty')
  return episode


def num_outputs(learner: FewShotLearner, x) -> int:
  """The model's number of logits, from one forward pass on `x` [n, ...] (subclassed models declare no outputs)."""
  return int(learner.logits(learner.theta, x).shape[-1])


def _check_labels(learner: FewShotLearner, episode: Episode):
  ways = num_outputs(learner, episode.support_images[0])
  labels = np.concatenate([np.ravel(episode.support_labels), np.ravel(episode.query_labels)])
  if labels.min() < 0 or labels.max() >= ways:
    raise ConfigError(f'labels must lie in [0, {ways}) (the model has {ways} outputs); got {labels.min()}..'
                      f'{labels.max()}')


def _batches(source: EpisodeSource, batch_size: int, seed: int, repeat: bool) -> Iterator[Episode]:
  """Meta-batches [B, ...] of episodes: arrays are shuffled each pass; datasets are batched (and repeated)."""
  if isinstance(source, tf.data.Dataset):
    spec = source.element_spec
    if isinstance(spec, dict):
      source = source.map(lambda e: tuple(e[k] for k in KEYS))
    dataset = (source.repeat() if repeat else source).batch(batch_size, drop_remainder=repeat)
    for batch in dataset.as_numpy_iterator():
      yield Episode(*batch)
    return
  episodes = as_episodes(source)
  rng = np.random.default_rng(seed)
  n = len(episodes.support_images)
  while True:
    order = rng.permutation(n) if repeat else np.arange(n)
    for start in range(0, n - (batch_size - 1 if repeat else 0), batch_size):
      idx = order[start:start + batch_size]
      yield Episode(*(a[idx] for a in episodes))
    if not repeat:
      return


def meta_train(learner: FewShotLearner, episodes: EpisodeSource, steps: int, meta_batch_size: int = 4,
               seed: int = 0, show_progress: bool = True) -> List[Dict[str, float]]:
  """`steps` meta-updates on meta-batches of `meta_batch_size` episodes; returns the per-step query loss/accuracy.

  Raises wtl_tf.TrainingDiverged when the loss becomes NaN or infinite.
  """
  if steps < 1 or meta_batch_size < 1:
    raise ConfigError(f'steps and meta_batch_size must be positive, got {steps} and {meta_batch_size}')
  history = []
  batches = _batches(episodes, meta_batch_size, seed, repeat=True)
  bar = tqdm(range(steps), desc=learner.name, unit='step', disable=not show_progress, dynamic_ncols=True)
  for step in bar:
    batch = next(batches)
    if step == 0:
      _check_labels(learner, batch)
    start = step * meta_batch_size
    out = learner.train_step(batch, np.arange(start, start + meta_batch_size, dtype=np.int64))
    history.append({k: float(v) for k, v in out.items()})
    bar.set_postfix(loss=f'{history[-1]["loss"]:.3f}', acc=f'{history[-1]["accuracy"]:.3f}')
  return history


def evaluate(learner: FewShotLearner, episodes: EpisodeSource, batch_size: int = 8) -> Dict[str, object]:
  """Query accuracy after adapting to each episode's support set: mean, 95% CI and the per-episode values."""
  accuracies = []
  for i, batch in enumerate(_batches(episodes, batch_size, 0, repeat=False)):
    if i == 0:
      _check_labels(learner, batch)
    positions = np.arange(i * batch_size, i * batch_size + len(batch.support_images), dtype=np.int64)
    acc, _ = learner.eval_step(batch, positions, split='test')
    accuracies.append(acc.numpy())
  per_episode = np.concatenate(accuracies)
  mean, ci95 = mean_ci95(per_episode)
  return {'accuracy': mean, 'ci95': ci95, 'per_episode': per_episode}


def adapt_and_predict(learner: FewShotLearner, support_x, support_y, query_x, inner_steps: Optional[int] = None):
  """Logits [n_query, ways] of one episode: adapt to (support_x [S, ...], support_y [S]), then predict query_x."""
  loop = learner.eval_inner_loop if inner_steps is None else InnerLoop(num_steps=inner_steps,
                                                                        adapt_bn=learner.inner_loop.adapt_bn)
  params = learner.adapt(support_x, support_y, split='test', loop=loop)
  return learner.logits(params, query_x)
