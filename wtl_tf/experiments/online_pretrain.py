"""OSAKA's pre-training (ALGORITHMS.md 5.2): MAML on Omniglot classes [0, 900), early stopping on [900, 1000).

An epoch is `batches_per_epoch` meta-updates on fresh 10-way 5-shot 15-query tasks (drawn with replacement from
images 0-9 / 10-19 of each class), then the mean query accuracy after adaptation on `val_batches` validation
meta-batches. The best epoch's model (theta, BN statistics, m and the optimizer state, which the stream continues
from as in OSAKA) is kept; training stops once `patience` epochs in a row fail to beat it, or after `max_epochs`.

Validation tasks are the same every epoch (OSAKA draws new ones each time): model selection then compares epochs on
equal terms. Training tasks of epoch e are episodes e*B*batches .. of the seeded stream, so an epoch is a pure
function of (seed, e) and an interrupted pre-training resumes after its last finished epoch.

The result is cached under `<cache>/<learner name>-<key>/`, where the key hashes everything that determines it
(learner class, modulation, inner loop, optimizers, model, these settings, the Omniglot conversion), so every stream
seed of a setting shares one pre-trained model, as in OSAKA:
  pretrained.npz   the best model with optimizer state        pretrain.json   settings, per-epoch history, best epoch
  progress.npz / progress.json                                the current epoch's state, for resuming
"""
import dataclasses
import hashlib
import json
import os
import time
from typing import Dict, Optional

import gin
import numpy as np
from tqdm import tqdm

from wtl_tf.data import osaka
from wtl_tf.data import records
from wtl_tf.learners.online import base as online_base

VERSION = 1  # Bump when the pre-training procedure changes, so old caches are not reused.


@gin.register
@dataclasses.dataclass(frozen=True)
class Pretraining:
  """Settings of OSAKA's pre-training (ALGORITHMS.md 5.2, 5.4).

  Attributes:
    meta_batch_size: tasks per meta-update (OSAKA's batch_size: 4 at p=0.98, 8 at p=0.9).
    max_epochs: upper bound on epochs (OSAKA: 1000; early stopping ends it much sooner).
    patience: stop after this many epochs in a row without a better validation accuracy (OSAKA: stop when the count
      exceeds patience).
    batches_per_epoch: meta-updates per epoch (OSAKA: 100).
    val_batches: validation meta-batches per epoch (OSAKA: 100, of meta_batch_size tasks each).
    seed: seeds the model initialisation and the task streams (shared by all stream seeds).
    ways, shots, queries: the task shape (10-way 5-shot, 15 queries).
    train_classes, val_classes: class-index ranges of OSAKA's Omniglot order.
  """
  meta_batch_size: int = 4
  max_epochs: int = 1000
  patience: int = 10
  batches_per_epoch: int = 100
  val_batches: int = 100
  seed: int = 0
  ways: int = 10
  shots: int = 5
  queries: int = 15
  train_classes: tuple = (0, 900)
  val_classes: tuple = (900, 1000)

  def __post_init__(self):
    online_base.check_positive_int('Pretraining', meta_batch_size=self.meta_batch_size,
                                   batches_per_epoch=self.batches_per_epoch, val_batches=self.val_batches,
                                   ways=self.ways, shots=self.shots, queries=self.queries)
    if not isinstance(self.max_epochs, int) or self.max_epochs < 0:
      raise ValueError(f'Pretraining.max_epochs must be an int >= 0, got {self.max_epochs!r}')
    if not isinstance(self.patience, int) or self.patience < 0:
      raise ValueError(f'Pretraining.patience must be an int >= 0, got {self.patience!r}')


def _optimizer_config(optimizer):
  if optimizer is None:
    return None
  config = dict(optimizer.get_config())
  config.pop('name', None)
  return {'class': type(optimizer).__name__, **{k: v for k, v in config.items() if isinstance(v, (int, float, str,
                                                                                                 bool, type(None)))}}


def cache_settings(learner, settings: Pretraining, omniglot: records.DatasetSpec) -> Dict[str, object]:
  """Everything that determines the pre-trained model (hashed into the cache key); call it before training."""
  # The architecture and the initial weights identify the model (Keras' auto-generated layer names do not).
  model = hashlib.sha1()
  for layer in learner.model.layers:
    model.update(type(layer).__name__.encode())
  for v in learner.theta + learner.non_trainable:
    model.update(str(tuple(v.shape)).encode())
    model.update(np.ascontiguousarray(v.numpy()).tobytes())
  return {
      'version': VERSION,
      'learner': type(learner).__name__,
      'modulation': repr(learner.modulation),
      'inner_loop': repr(learner.inner_loop),
      'optimizer': _optimizer_config(learner.optimizer),
      'mask_optimizer': _optimizer_config(learner.mask_optimizer),
      'mask_seed': learner.seed,
      'model': model.hexdigest(),
      'pretraining': dataclasses.asdict(settings),
      'omniglot': {'classes': len(omniglot.classes), 'options': omniglot.raw.get('options'),
                   'pixel_convention': omniglot.raw.get('pixel_convention')},
  }


def cache_dir(cache_root: str, learner, settings: Pretraining, omniglot: records.DatasetSpec) -> str:
  key = hashlib.sha1(json.dumps(cache_settings(learner, settings, omniglot), sort_keys=True).encode()).hexdigest()
  return os.path.join(cache_root, f'{learner.name}-{key[:16]}')


def default_cache_root() -> str:
  return os.environ.get('WTL_PRETRAIN_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'wtl_tf', 'pretrained')


def _write_json(path, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _write_npz(path, arrays):
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _load_npz(path):
  with np.load(path) as data:
    return dict(data)


def pretrain(learner, omniglot: records.DatasetSpec, settings: Pretraining, cache_root: Optional[str] = None,
             show_progress: bool = True, log=None) -> Dict[str, object]:
  """Pre-trains `learner` (or loads the cached result) and leaves the best model in it; returns pretrain.json.

  Args:
    learner: an OnlineLearner (its modulation, inner loop and optimizer define the MAML variant).
    omniglot: OSAKA's Omniglot conversion (`--option split=osaka`).
    settings: the Pretraining settings.
    cache_root: where pre-trained models are cached (default $WTL_PRETRAIN_DIR or ~/.cache/wtl_tf/pretrained).
    log: optional wtl_tf.summaries.Summaries for per-epoch records (split 'pretrain').
  """
  directory = cache_dir(cache_root or default_cache_root(), learner, settings, omniglot)
  info_path = os.path.join(directory, 'pretrain.json')
  if os.path.exists(info_path):
    with open(info_path, encoding='utf-8') as f:
      info = json.load(f)
    if info.get('done'):
      learner.restore_model(_load_npz(os.path.join(directory, 'pretrained.npz')))
      print(f'{learner.name}: using the pre-trained model in {directory} (best epoch {info["best_epoch"]}, '
            f'validation accuracy {info["best_val_accuracy"]:.4f})', flush=True)
      return dict(info, directory=directory, reused=True)
  os.makedirs(directory, exist_ok=True)
  info = {'settings': cache_settings(learner, settings, omniglot), 'history': [], 'best_epoch': None,
          'best_val_accuracy': None, 'epochs_without_improvement': 0, 'done': False, 'seconds': 0.0}
  progress_path = os.path.join(directory, 'progress.json')
  if os.path.exists(progress_path):  # Resume after the last finished epoch.
    with open(progress_path, encoding='utf-8') as f:
      info = json.load(f)
    learner.restore_model(_load_npz(os.path.join(directory, 'progress.npz')))
    print(f'{learner.name}: resuming pre-training after epoch {len(info["history"])}', flush=True)
  b = settings.meta_batch_size
  shape = dict(ways=settings.ways, shots=settings.shots, queries=settings.queries)
  done_epochs = len(info['history'])
  # Episode i is a pure function of (seed, i): one iterator from the resume point gives every later epoch's tasks.
  train = iter(osaka.pretrain_dataset(omniglot, seed=settings.seed, class_range=tuple(settings.train_classes),
                                      start=done_epochs * settings.batches_per_epoch * b, meta_batch_size=b,
                                      **shape))
  val = osaka.pretrain_dataset(omniglot, seed=settings.seed + 1, class_range=tuple(settings.val_classes),
                               num_episodes=settings.val_batches * b, meta_batch_size=b, **shape)
  start = time.time() - info['seconds']
  for epoch in range(done_epochs, settings.max_epochs):
    if info['epochs_without_improvement'] > settings.patience:
      break
    losses, accuracies = [], []
    for _ in tqdm(range(settings.batches_per_epoch), desc=f'pre-training epoch {epoch + 1}',
                  disable=not show_progress, leave=False, dynamic_ncols=True):
      out = learner.pretrain_step(next(train))
      if not np.isfinite(out['loss']):
        raise FloatingPointError(f'{learner.name}: pre-training loss became {out["loss"]} in epoch {epoch + 1}; the '
                                 f'state after epoch {epoch} in {directory} is kept. Lower the learning rate.')
      losses.append(out['loss'])
      accuracies.append(out['accuracy'])
    val_accuracy = float(np.mean([learner.evaluate_tasks(episodes) for episodes in val]))
    record = {'epoch': epoch + 1, 'train_loss': float(np.mean(losses)), 'train_accuracy': float(np.mean(accuracies)),
              'val_accuracy': val_accuracy, 'seconds': time.time() - start}
    improved = info['best_val_accuracy'] is None or val_accuracy > info['best_val_accuracy']
    if improved:
      info.update(best_epoch=epoch + 1, best_val_accuracy=val_accuracy, epochs_without_improvement=0)
      _write_npz(os.path.join(directory, 'pretrained.npz'), learner.model_state())
    else:
      info['epochs_without_improvement'] += 1
    info['history'].append(record)
    info['seconds'] = time.time() - start
    print(f'{learner.name} pre-training epoch {epoch + 1}: train loss {record["train_loss"]:.4f}, train accuracy '
          f'{record["train_accuracy"]:.4f}, validation accuracy {val_accuracy:.4f}'
          f'{" (best)" if improved else ""}, {record["seconds"]:.0f} s', flush=True)
    if log is not None:
      log.log(epoch + 1, 'pretrain', record['train_loss'], val_accuracy, learner.sparsity(),
              train_accuracy=record['train_accuracy'])
    _write_npz(os.path.join(directory, 'progress.npz'), learner.model_state())
    _write_json(progress_path, info)
  info['done'] = True
  if info['best_epoch'] is None:  # max_epochs = 0: the "pre-trained" model is the initialisation.
    _write_npz(os.path.join(directory, 'pretrained.npz'), learner.model_state())
  learner.restore_model(_load_npz(os.path.join(directory, 'pretrained.npz')))
  _write_json(info_path, info)
  return dict(info, directory=directory, reused=False)
