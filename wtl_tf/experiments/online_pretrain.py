"""OSAKA's pre-training (docs/ALGORITHMS.md 5.2): MAML on Omniglot classes [0, 900), early stopping on [900, 1000).

Each epoch is a pure function of (seed, epoch), so an interrupted run resumes after its last finished epoch. The best
model, optimizer state included, is cached in a wtl_tf/rundir.RunDir `<cache>/<learner name>-<key>/` shared by all
stream seeds (a second process waits, then reuses it). The key hashes `cache_settings`: the built learner as
wtl_tf/rundir.describe sees it (not gin bindings, so library callers get the same key and new attributes count with
no list to update), the model's architecture and initial weights, these settings and the Omniglot conversion. Files:
pretrained.npz (best model), pretrain.json (settings, history, best epoch), progress.json + its state file (resume).
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

from wtl_tf import rundir
from wtl_tf.data import osaka
from wtl_tf.data import records
from wtl_tf.errors import TrainingDiverged, check_ints

VERSION = 2  # Bump when the pre-training procedure changes, so old caches are not reused.


@gin.register
@dataclasses.dataclass(frozen=True)
class Pretraining:
  """Settings of OSAKA's pre-training (docs/ALGORITHMS.md 5.2, 5.4).

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
    check_ints('Pretraining', meta_batch_size=self.meta_batch_size, batches_per_epoch=self.batches_per_epoch,
               val_batches=self.val_batches, ways=self.ways, shots=self.shots, queries=self.queries)
    check_ints('Pretraining', least=0, max_epochs=self.max_epochs, patience=self.patience)


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
      'learner': rundir.describe(learner),
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
  cache = rundir.RunDir(directory)
  with cache.lock(wait=True):  # Another process pre-training the same setting: wait for it, then reuse its model.
    return _pretrain(cache, learner, omniglot, settings, show_progress, log)


def _pretrain(cache, learner, omniglot, settings, show_progress, log):
  directory = cache.path
  info = cache.read_json('pretrain.json')
  if info and info.get('done'):
    learner.restore_model(cache.read_npz('pretrained.npz'))
    print(f'{learner.name}: using the pre-trained model in {directory} (best epoch {info["best_epoch"]}, '
          f'validation accuracy {info["best_val_accuracy"]:.4f})', flush=True)
    return dict(info, directory=directory, reused=True)
  info = {'settings': cache_settings(learner, settings, omniglot), 'history': [], 'best_epoch': None,
          'best_val_accuracy': None, 'epochs_without_improvement': 0, 'done': False, 'seconds': 0.0}
  best = None  # The best epoch's model state.
  loaded = cache.load_checkpoint('progress')
  if loaded is not None:  # Resume after the last finished epoch.
    state, info = loaded
    learner.restore_model({k[len('current/'):]: v for k, v in state.items() if k.startswith('current/')})
    best = {k[len('best/'):]: v for k, v in state.items() if k.startswith('best/')} or None
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
        raise TrainingDiverged(
            f'{learner.name}: pre-training loss became {out["loss"]} in epoch {epoch + 1}; the state after epoch '
            f'{epoch} in {directory} is kept. Lower the learning rate.')
      losses.append(out['loss'])
      accuracies.append(out['accuracy'])
    val_accuracy = float(np.mean([learner.evaluate_tasks(episodes) for episodes in val]))
    record = {'epoch': epoch + 1, 'train_loss': float(np.mean(losses)), 'train_accuracy': float(np.mean(accuracies)),
              'val_accuracy': val_accuracy, 'seconds': time.time() - start}
    improved = info['best_val_accuracy'] is None or val_accuracy > info['best_val_accuracy']
    current = learner.model_state()
    if improved:
      info.update(best_epoch=epoch + 1, best_val_accuracy=val_accuracy, epochs_without_improvement=0)
      best = current
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
    state = {f'current/{k}': v for k, v in current.items()}
    state.update({f'best/{k}': v for k, v in best.items()})
    cache.save_checkpoint(state, info, name='progress')
  info['done'] = True
  best = best or learner.model_state()  # max_epochs = 0: the "pre-trained" model is the initialisation.
  learner.restore_model(best)
  cache.write_npz_atomic('pretrained.npz', best)
  cache.write_json_atomic('pretrain.json', info)  # Last: `done` means pretrained.npz is complete.
  return dict(info, directory=directory, reused=False)
