"""A small demo over the core: FOMAML vs sparse-MAML on synthetic 5-way episodes (no download).

It stands in for the main job until the continual-learning experiment lands.
"""
import json
import os

import gin
import keras
import numpy as np
import tensorflow as tf
import tqdm

from wtl_tf import inner_loop
from wtl_tf import modulation as M
from wtl_tf import params


def _episode(rng, ways=5, shots=2, queries=5, dim=32):
  centers = rng.normal(size=(ways, dim))
  sy, qy = np.repeat(np.arange(ways), shots), np.repeat(np.arange(ways), queries)
  sx = centers[sy] + 0.8 * rng.normal(size=(len(sy), dim))
  qx = centers[qy] + 0.8 * rng.normal(size=(len(qy), dim))
  return [tf.constant(a, t) for a, t in ((sx, tf.float32), (sy, tf.int32), (qx, tf.float32), (qy, tf.int32))]


def _train(mod, steps, num_steps, seed):
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation='relu'), keras.layers.Dense(5)])
  infos = params.describe(model)
  masks = [tf.Variable(tf.cast(m, tf.float32)) for m in mod.init_mask_params(infos, seed)]
  loop = inner_loop.InnerLoop(num_steps=num_steps)
  opt_t, opt_m = keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-2)

  @tf.function
  def step(sx, sy, qx, qy):
    theta = [v.value for v in model.trainable_variables]
    with tf.GradientTape() as tape:
      tape.watch(theta)
      fast = loop.adapt(model, theta, [], loop.select(mod.step_sizes(masks, infos), infos), sx, sy)
      logits = inner_loop.forward(model, fast, [], qx)
      loss = inner_loop.cross_entropy(qy, logits)
    g_t, g_m = tape.gradient(loss, (theta, masks))
    opt_t.apply(g_t, model.trainable_variables)
    if masks:
      opt_m.apply(g_m, masks)
    return loss, tf.reduce_mean(tf.cast(tf.argmax(logits, 1, output_type=tf.int32) == qy, tf.float32))

  rng = np.random.default_rng(seed)
  accs = []
  for _ in tqdm.trange(steps, desc=type(mod).__name__):
    _, acc = step(*_episode(rng))
    accs.append(float(acc))
  sp = {k: float(v) for k, v in M.group_sparsity(mod, masks, infos).items()} if masks else {'overall': 0.0}
  return float(np.mean(accs[-50:])), sp


@gin.configurable
def run_demo(workdir, steps=300, num_steps=5, step_size=0.5, seed=0):
  results = {}
  for name, mod in (('fomaml', M.Identity(step_size)), ('sparse_maml', M.BinaryMask(step_size))):
    acc, sp = _train(mod, steps, num_steps, seed)
    results[name] = {'accuracy': acc, 'sparsity': sp}
  print(f"{'learner':<12} {'acc(last 50)':>12} {'sparsity':>9}")
  for name, r in results.items():
    print(f"{name:<12} {r['accuracy']:>12.3f} {r['sparsity']['overall']:>9.3f}")
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'setting': 'demo', 'seed': seed, 'results': results}, f, indent=2)
  return results
