"""The paper's reference numbers (docs/ALGORITHMS.md section 6), in %, as (mean, std): Tables 1-6 as data.

    TABLE_1[learner][shots]                       ConvNet-4, miniImageNet 5-way test accuracy
    TABLE_2[learner][shots]                       ResNet-12, miniImageNet 5-way test accuracy
    TABLE_3[learner][shots]                       ConvNet-4 sparsity (overall) of the Table-1 runs
    TABLE_4[learner][shots][dataset]              cross-domain accuracy of the Table-1 models
    TABLE_5[benchmark][learner][metric]           MNIST continual learning; metric 'ra' or 'bti'
    TABLE_6[p][learner]                           OSAKA cumulative accuracy (p = 0.98 or 0.9)

The look-ups `fewshot(row)`, `continual(benchmark, learner)` and `online(p, learner)` map the gin rows onto them;
the reproduction tool (tools/reproduce.py) prints its results next to these.
"""
import os
from typing import Dict, Optional, Tuple

MeanStd = Tuple[float, float]

TABLE_1 = {
    'maml': {1: (48.07, 1.75), 5: (63.15, 0.91)}, 'anil': {1: (46.70, 0.40), 5: (61.50, 0.50)},
    'boil': {1: (49.61, 0.16), 5: (66.45, 0.37)}, 'meta_sgd': {1: (50.47, 1.87), 5: (64.03, 0.94)},
    'exp_maml': {1: (48.38, 0.45), 5: (65.21, 0.62)}, 'sparse_relu_maml': {1: (49.84, 0.49), 5: (66.80, 0.43)},
    'sparse_maml': {1: (50.35, 0.39), 5: (67.03, 0.74)}, 'sparse_maml_plus': {1: (51.04, 0.59), 5: (68.05, 0.84)},
}
TABLE_2 = {  # BOIL 1-shot is not reported.
    'maml': {1: (53.91, 0.61), 5: (69.36, 1.23)}, 'anil': {1: (55.25, 0.33), 5: (70.03, 0.58)},
    'boil': {5: (70.50, 0.28)}, 'sparse_maml': {1: (55.02, 0.46), 5: (70.02, 1.12)},
    'sparse_relu_maml': {1: (56.39, 0.38), 5: (73.01, 0.24)},
}
TABLE_3 = {
    'sparse_relu_maml': {1: (77.53, 0.73), 5: (73.53, 0.85)}, 'sparse_maml': {1: (79.04, 1.61), 5: (74.98, 0.10)},
    'sparse_maml_plus': {1: (78.05, 1.67), 5: (76.66, 1.13)},
}
TABLE_4 = {
    'maml': {1: {'tieredimagenet': (51.61, .20), 'cub': (40.51, .08), 'cars': (33.57, .14)},
             5: {'tieredimagenet': (65.76, .27), 'cub': (53.09, .16), 'cars': (44.56, .21)}},
    'anil': {1: {'tieredimagenet': (52.82, .29), 'cub': (41.12, .15), 'cars': (34.77, .31)},
             5: {'tieredimagenet': (66.52, .28), 'cub': (55.82, .21), 'cars': (46.55, .29)}},
    'boil': {1: {'tieredimagenet': (53.23, .41), 'cub': (44.20, .15), 'cars': (36.12, .29)},
             5: {'tieredimagenet': (69.37, .23), 'cub': (60.92, .11), 'cars': (50.64, .22)}},
    'sparse_relu_maml': {1: {'tieredimagenet': (53.18, .52), 'cub': (41.86, .95), 'cars': (35.46, .67)},
                         5: {'tieredimagenet': (69.06, .28), 'cub': (59.55, 1.23), 'cars': (51.21, .89)}},
    'sparse_maml': {1: {'tieredimagenet': (53.47, .53), 'cub': (41.37, .73), 'cars': (35.90, .50)},
                    5: {'tieredimagenet': (68.83, .65), 'cub': (60.58, 1.10), 'cars': (52.63, .56)}},
    'sparse_maml_plus': {1: {'tieredimagenet': (53.91, .67), 'cub': (43.43, 1.04), 'cars': (37.14, .77)},
                         5: {'tieredimagenet': (69.92, .21), 'cub': (62.02, .78), 'cars': (53.18, .44)}},
}
TABLE_5 = {
    'rotations': {'baseline': {'ra': (53.38, 1.53), 'bti': (-5.44, 1.70)},
                  'gem': {'ra': (67.38, 1.75), 'bti': (-18.02, 1.99)},
                  'mer': {'ra': (77.42, 0.78), 'bti': (-5.60, 0.70)},
                  'la_maml': {'ra': (77.42, 0.65), 'bti': (-8.64, 0.40)},
                  'sparse_la_maml': {'ra': (77.77, 0.58), 'bti': (-8.16, 0.61)}},
    'permutations': {'baseline': {'ra': (55.42, 0.65), 'bti': (-13.76, 1.19)},
                     'gem': {'ra': (55.42, 1.10), 'bti': (-24.42, 1.10)},
                     'mer': {'ra': (73.46, 0.45), 'bti': (-9.96, 0.45)},
                     'la_maml': {'ra': (74.34, 0.67), 'bti': (-7.60, 0.51)},
                     'sparse_la_maml': {'ra': (76.88, 0.72), 'bti': (-8.39, 0.63)}},
    'many_permutations': {'baseline': {'ra': (32.62, 0.43), 'bti': (-19.06, 0.86)},
                          'gem': {'ra': (32.14, 0.50), 'bti': (-23.52, 0.87)},
                          'mer': {'ra': (47.40, 0.35), 'bti': (-17.78, 0.39)},
                          'la_maml': {'ra': (48.46, 0.45), 'bti': (-12.96, 0.07)},
                          'sparse_la_maml': {'ra': (50.81, 0.79), 'bti': (-13.73, 0.73)}},
}
TABLE_6 = {  # T = 10000 stream steps, 5 seeds. bgd, metacog and metabgd have no gin row here.
    0.98: {'online_adam': (73.9, 2.2), 'fine_tuning': (72.7, 1.7), 'maml': (84.5, 1.7), 'anil': (75.3, 2.0),
           'bgd': (87.8, 1.3), 'metacog': (88.0, 1.0), 'metabgd': (91.1, 2.6), 'c_maml': (92.8, 0.6),
           'sparse_c_maml': (94.2, 0.4), 'sparse_relu_c_maml': (93.5, 0.5)},
    0.9: {'online_adam': (23.8, 1.2), 'fine_tuning': (22.1, 1.1), 'maml': (75.5, 0.7), 'anil': (69.1, 0.8),
          'bgd': (63.4, 0.9), 'metacog': (63.6, 0.9), 'metabgd': (74.8, 1.1), 'c_maml': (83.3, 0.4),
          'sparse_c_maml': (86.3, 0.4), 'sparse_relu_c_maml': (86.1, 0.2)},
}
TABLES = {1: TABLE_1, 2: TABLE_2, 3: TABLE_3, 4: TABLE_4, 5: TABLE_5, 6: TABLE_6}


def fewshot(row: str) -> Dict[str, MeanStd]:
  """{metric: (mean, std)} the paper reports for a gin/fewshot row (empty for rows it does not report).

  Metrics: 'test_accuracy' (Tables 1, 2), 'sparsity' (Table 3), 'cross_domain/<dataset>' (Table 4; the cross-domain
  rows train as their Table-1 row, so they also get its accuracy and sparsity).
  """
  name = os.path.basename(row)
  if name.endswith('.gin'):
    name = name[:-4]
  out = {}
  for learner, by_shots in TABLE_1.items():
    for shots, value in by_shots.items():
      base = f'{learner}_conv4_miniimagenet_5w{shots}s'
      if name in (base, base + '_crossdomain'):
        out['test_accuracy'] = value
        if shots in TABLE_3.get(learner, {}):
          out['sparsity'] = TABLE_3[learner][shots]
      if name == base + '_crossdomain' and shots in TABLE_4.get(learner, {}):
        for dataset, v in TABLE_4[learner][shots].items():
          out[f'cross_domain/{dataset}'] = v
  for learner, by_shots in TABLE_2.items():
    for shots, value in by_shots.items():
      if name == f'{learner}_resnet12_miniimagenet_5w{shots}s':
        out['test_accuracy'] = value
  return out


def continual(benchmark: str, learner: str) -> Dict[str, MeanStd]:
  """{'ra': (mean, std), 'bti': (mean, std)} of Table 5 (empty where the paper has no such cell)."""
  return dict(TABLE_5.get(benchmark, {}).get(learner, {}))


def online(p: float, learner: str) -> Optional[MeanStd]:
  """Table 6's cumulative accuracy (mean, std) for a learner at p, or None."""
  return TABLE_6.get(p, {}).get(learner)
