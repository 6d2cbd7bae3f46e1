"""Continual-learning benchmarks built from prepared records (docs/ALGORITHMS.md 4.1, 4.7).

Kinds: rotations (U[9t, 9t+9) degrees per task), permutations, many_permutations, and class_split (consecutive class
groups, e.g. CIFAR-10 as 5 tasks of 2). Each task takes a seeded training subset and the whole, equally transformed
test split; angles go into the task descriptors. Rotation is PIL's exactly: PIL rotates an index image once per task
and the resulting map gathers every image.
"""
import dataclasses
from typing import List, Optional, Sequence, Tuple

import gin
import numpy as np

from wtl_tf.data import prepare, records
from wtl_tf.data.fewshot import KNOWN_SHAPES
from wtl_tf.errors import ConfigError, check_ints

KINDS = ('rotations', 'permutations', 'many_permutations', 'class_split')
TEN_CLASSES = ('mnist', 'fashion_mnist', 'cifar10')  # Datasets whose shape and class count are known without data.
DEFAULTS = {'rotations': (20, 1000), 'permutations': (20, 1000), 'many_permutations': (100, 200)}


@dataclasses.dataclass
class Task:
  """One task: flattened uint8 images [n, D] and int64 labels."""
  descriptor: str
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


def rotation_map(angle: float, height: int, width: int) -> np.ndarray:
  """Source pixel index for every output pixel of PIL's rotate(angle) (-1 where PIL fills with black)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  index = np.arange(1, height * width + 1, dtype=np.int32).reshape(height, width)
  rotated = np.asarray(Image.fromarray(index, mode='I').rotate(angle), dtype=np.int64)
  return rotated.reshape(-1) - 1


def apply_map(images: np.ndarray, source: np.ndarray) -> np.ndarray:
  """Gathers flattened pixels [n, H*W*C] through a per-pixel source map (-1 = black), channels kept together."""
  n = images.shape[0]
  pixels = images.reshape(n, len(source), -1)
  out = pixels[:, np.maximum(source, 0), :]
  out[:, source < 0, :] = 0
  return out.reshape(n, -1)


def _subset(rng, n_available, n_wanted, what):
  if n_wanted > n_available:
    raise ConfigError(f'{what}: asked for {n_wanted} training samples per task, the split has only {n_available}')
  return rng.choice(n_available, size=n_wanted, replace=False)


def build_tasks(kind: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                num_tasks: Optional[int] = None, samples_per_task: Optional[int] = None, seed: int = 0,
                classes_per_task: int = 2) -> List[Task]:
  """Builds the tasks of a benchmark from uint8 images [n, H, W, C] and their labels."""
  if kind not in KINDS:
    raise ConfigError(f'unknown continual benchmark {kind!r}; choose one of {KINDS}')
  default_tasks, default_samples = DEFAULTS.get(kind, (None, None))
  num_tasks = num_tasks or default_tasks
  samples_per_task = samples_per_task or default_samples
  height, width = train_x.shape[1:3]
  rng = np.random.default_rng(seed)
  flat_train = train_x.reshape(len(train_x), -1)
  flat_test = test_x.reshape(len(test_x), -1)
  tasks = []
  if kind == 'class_split':
    classes = np.unique(train_y)
    max_tasks = len(classes) // classes_per_task
    num_tasks = num_tasks or max_tasks
    if num_tasks > max_tasks or num_tasks <= 0:
      raise ConfigError(f'class_split: {num_tasks} tasks of {classes_per_task} classes need '
                       f'{num_tasks * classes_per_task} classes, the data has {len(classes)}')
    for t in range(num_tasks):
      chosen = classes[t * classes_per_task:(t + 1) * classes_per_task]
      train_idx = np.flatnonzero(np.isin(train_y, chosen))
      if samples_per_task:
        train_idx = train_idx[_subset(rng, len(train_idx), samples_per_task, f'task {t}')]
      else:
        train_idx = rng.permutation(train_idx)
      test_idx = np.flatnonzero(np.isin(test_y, chosen))
      tasks.append(Task(f'classes {chosen.tolist()}', flat_train[train_idx], train_y[train_idx],
                        flat_test[test_idx], test_y[test_idx]))
    return tasks
  if num_tasks <= 0 or samples_per_task <= 0:
    raise ConfigError(f'{kind}: num_tasks and samples_per_task must be positive, got {num_tasks}, {samples_per_task}')
  for t in range(num_tasks):
    if kind == 'rotations':
      angle = float(rng.uniform(9.0 * t, 9.0 * t + 9.0))
      source, descriptor = rotation_map(angle, height, width), f'rotation {angle:.4f} deg'
    else:
      source, descriptor = rng.permutation(height * width), f'permutation {t}'
    idx = _subset(rng, len(train_x), samples_per_task, f'{kind} task {t}')
    tasks.append(Task(descriptor, apply_map(flat_train[idx], source), train_y[idx],
                      apply_map(flat_test, source), test_y.copy()))
  return tasks


@gin.register
@dataclasses.dataclass
class Benchmark:
  """A continual benchmark on prepared records (converted from raw files on first use, see prepare.py).

  Attributes:
    dataset: records dataset name (mnist, fashion_mnist, cifar10, ...).
    kind: one of KINDS.
    num_tasks / samples_per_task: None means the defaults of docs/ALGORITHMS.md 4.1 for the kind.
    seed: the benchmark seed (angles, permutations, subsets); independent of the learner's seed.
    records_dir / raw_dir: override where records are found and raw files are converted from.
  """
  dataset: str = 'mnist'
  kind: str = 'rotations'
  num_tasks: Optional[int] = None
  samples_per_task: Optional[int] = None
  seed: int = 0
  classes_per_task: int = 2
  records_dir: Optional[str] = None
  raw_dir: Optional[str] = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f'Benchmark.kind must be one of {KINDS}, got {self.kind!r}')
    check_ints('Benchmark', num_tasks=self.num_tasks, samples_per_task=self.samples_per_task)

  def load(self) -> List[Task]:
    spec = prepare.ensure_records(self.dataset, self.records_dir, self.raw_dir)
    train_x, train_y = records.load_split(spec, 'train')
    test_x, test_y = records.load_split(spec, 'test')
    return build_tasks(self.kind, train_x, train_y, test_x, test_y, self.num_tasks, self.samples_per_task,
                       self.seed, self.classes_per_task)

  def shape(self) -> Tuple[int, int]:
    """(input size, number of classes) of the benchmark's tasks, without loading them (no data needed for the
    10-class datasets; others read their records' description)."""
    if self.dataset in TEN_CLASSES:
      return int(np.prod(KNOWN_SHAPES[self.dataset])), 10
    spec = prepare.ensure_records(self.dataset, self.records_dir, self.raw_dir)
    return int(np.prod(spec.image_shape)), len({c['id'] for c in spec.classes})

  @property
  def name(self) -> str:
    return f'{self.dataset}_{self.kind}'


def input_size(tasks: Sequence[Task]) -> int:
  return int(tasks[0].train_x.shape[1])
