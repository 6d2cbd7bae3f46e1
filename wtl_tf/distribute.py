"""Scaling out with tf.distribute: choosing a strategy, and feeding each replica its share of every meta-batch.

Step n's meta-batch is episode positions nB .. nB+B-1 for any replica count R; replica r (global id) gets
nB + r*B/R .. nB + (r+1)*B/R - 1, so tasks do not depend on R or the resume point. Each worker's pipeline yields its
local replicas' batches step by step, replica by replica (`distribute_datasets_from_function`'s order). Evaluation
uses the same layout over a fixed episode list padded by repetition; `eval_batches` says how many results are real.
Sources are duck-typed (wtl_tf/data/fewshot.py): train `batch_at(seed, first, size)` -> one-element dataset of
(Episode [size, ...], positions [size]); eval `dataset(positions, batch_size)` -> (Episode [b, ...], positions [b]).
"""
import math
import os
from typing import Optional, Sequence

import gin
import numpy as np
import tensorflow as tf
from wtl_tf.errors import ConfigError

STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')


@gin.register
def make_strategy(kind: str = 'default', devices: Optional[Sequence[str]] = None, logical_cpus: int = 0,
                  tpu: Optional[str] = None, intra_op_threads: Optional[int] = None,
                  inter_op_threads: Optional[int] = None) -> tf.distribute.Strategy:
  """A tf.distribute strategy.

  Args:
    kind: 'default' (no distribution), 'mirrored' (the devices of this host), 'multi_worker' (hosts listed in
      TF_CONFIG) or 'tpu'.
    devices: for 'mirrored', the devices to use (default: all GPUs, else the CPU(s)).
    logical_cpus: split the host CPU into this many logical devices first (tests of 'mirrored' on CPU). Must run
      before TensorFlow initialises its devices.
    tpu: for 'tpu', the TPU name or grpc address ('' or None: the local TPU VM).
    intra_op_threads, inter_op_threads: CPU thread pools (None: TensorFlow's defaults), set before TensorFlow
      starts; many small tasks (Omniglot) may profit from 1 intra-op thread (docs/PERFORMANCE.md).
  """
  if kind not in STRATEGIES:
    raise ConfigError(f'make_strategy.kind must be one of {STRATEGIES}, got {kind!r}')
  set_threads(intra_op_threads, inter_op_threads)
  if logical_cpus:
    split_cpu(logical_cpus)
  if kind == 'default':
    return tf.distribute.get_strategy()
  if kind == 'mirrored':
    if devices is None and logical_cpus:
      devices = [d.name for d in tf.config.list_logical_devices('CPU')]
    return tf.distribute.MirroredStrategy(devices=devices)
  if kind == 'multi_worker':
    if 'TF_CONFIG' not in os.environ:
      raise ConfigError("make_strategy(kind='multi_worker') needs TF_CONFIG describing the cluster and this task")
    return tf.distribute.MultiWorkerMirroredStrategy()
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or '')
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def set_threads(intra_op: Optional[int], inter_op: Optional[int]):
  """Sets TensorFlow's CPU thread pools (None leaves one alone); an error once TensorFlow has started."""
  threading = tf.config.threading
  for value, get, set_ in ((intra_op, threading.get_intra_op_parallelism_threads,
                            threading.set_intra_op_parallelism_threads),
                           (inter_op, threading.get_inter_op_parallelism_threads,
                            threading.set_inter_op_parallelism_threads)):
    if value is None or get() == value:
      continue
    try:
      set_(value)
    except RuntimeError as e:
      raise ConfigError(f'cannot change TensorFlow thread pools after it started ({e}); create the strategy '
                       f'first') from None


def split_cpu(count: int):
  """Presents the host CPU as `count` logical devices (idempotent; an error once TF has initialised devices)."""
  cpus = tf.config.list_physical_devices('CPU')
  current = tf.config.get_logical_device_configuration(cpus[0])
  if current is not None and len(current) == count:
    return
  try:
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError as e:
    raise ConfigError(f'cannot split the CPU into {count} logical devices after TensorFlow started ({e}); '
                     f'create the strategy first') from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run directory (the only process, or the chief / worker 0 of a cluster)."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not getattr(resolver, 'task_type', None):
    return True
  spec = resolver.cluster_spec().as_dict()
  if resolver.task_type == 'chief':
    return True
  return resolver.task_type == 'worker' and resolver.task_id == 0 and 'chief' not in spec


def worker_id(strategy: tf.distribute.Strategy) -> int:
  resolver = getattr(strategy, 'cluster_resolver', None)
  return int(getattr(resolver, 'task_id', 0) or 0) if resolver is not None else 0


def _layout(ctx: tf.distribute.InputContext, global_batch: int):
  replicas, pipelines = ctx.num_replicas_in_sync, ctx.num_input_pipelines
  if global_batch % replicas:
    raise ConfigError(f'batch size {global_batch} is not a multiple of the {replicas} replicas')
  if replicas % pipelines:
    raise ConfigError(f'{replicas} replicas do not split evenly over {pipelines} workers')
  local = replicas // pipelines
  return global_batch // replicas, local, ctx.input_pipeline_id * local


def train_batches(strategy: tf.distribute.Strategy, source, seed: int, global_batch: int, start_step: int = 0):
  """Endless distributed meta-batches from step `start_step` on (see the module docstring for the layout)."""

  def dataset_fn(ctx):
    per_replica, local, first_replica = _layout(ctx, global_batch)
    firsts = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max // (2 * global_batch)).flat_map(
        lambda n: tf.data.Dataset.range(local).map(lambda l: n * global_batch + (first_replica + l) * per_replica))
    batches = firsts.interleave(lambda first: source.batch_at(seed, first, per_replica),
                                cycle_length=tf.data.AUTOTUNE, num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=True)
    return batches.prefetch(tf.data.AUTOTUNE)

  return strategy.distribute_datasets_from_function(dataset_fn)


def eval_batches(strategy: tf.distribute.Strategy, episodes, global_batch: int):
  """(distributed dataset, number of steps, number of real episodes) over a fixed episode list."""
  total = len(episodes)
  steps = math.ceil(total / global_batch)
  positions = np.arange(steps * global_batch) % max(total, 1)

  def dataset_fn(ctx):
    per_replica, local, first_replica = _layout(ctx, global_batch)
    order = [positions[n * global_batch + (first_replica + l) * per_replica:][:per_replica]
             for n in range(steps) for l in range(local)]
    mine = np.concatenate(order) if order else np.zeros((0,), np.int64)
    return episodes.dataset(mine, per_replica).prefetch(tf.data.AUTOTUNE)

  return strategy.distribute_datasets_from_function(dataset_fn), steps, total
