"""Every few-shot row file builds its experiment (data configuration, backbone, learner) with tiny debug overrides."""
import glob
import os
import re

import gin
import pytest

from wtl_tf import main
from wtl_tf import modulation as M
from wtl_tf.data.fewshot import FewShotData, SyntheticData

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {'base', 'conv4_miniimagenet', 'resnet12_miniimagenet', 'conv4_omniglot', 'cross_domain', 'smoke'}
ROWS = sorted(p for p in glob.glob(os.path.join(ROOT, 'gin', 'fewshot', '**', '*.gin'), recursive=True)
              if '/learners/' not in p and os.path.basename(p)[:-4] not in LAYERS)
NAME = re.compile(r'(?P<learner>[a-z_]+?)_(?P<backbone>conv4|resnet12)_(?P<dataset>[a-z]+)_'
                  r'(?P<ways>\d+)w(?P<shots>\d+)s(?P<rest>.*)\.gin$')
MODULATIONS = {'maml': M.Identity, 'fomaml': M.Identity, 'anil': M.FixedSubset, 'boil': M.FixedSubset,
               'meta_sgd': M.Linear, 'exp_maml': M.Exp, 'sparse_maml': M.BinaryMask,
               'sparse_relu_maml': M.ReluStraightThrough, 'sparse_maml_plus': M.NoisyBinaryMask}
# Debug overrides: build only (no data is read, nothing is trained) and a small sparse-MAML+ generator.
OVERRIDES = ['run_fewshot.build_only = True', 'NoisyBinaryMask.hidden_size = 4']


def test_every_table_row_has_a_file():
  names = {os.path.basename(p) for p in ROWS}
  for learner in ('maml', 'anil', 'boil', 'meta_sgd', 'exp_maml', 'sparse_relu_maml', 'sparse_maml',
                  'sparse_maml_plus'):
    assert {f'{learner}_conv4_miniimagenet_5w1s.gin', f'{learner}_conv4_miniimagenet_5w5s.gin'} <= names  # Table 1.
  for learner in ('maml', 'anil', 'boil', 'sparse_maml', 'sparse_relu_maml'):
    assert f'{learner}_resnet12_miniimagenet_5w5s.gin' in names  # Table 2.
  for learner in ('maml', 'anil', 'boil', 'sparse_relu_maml', 'sparse_maml', 'sparse_maml_plus'):
    assert f'{learner}_conv4_miniimagenet_5w1s_crossdomain.gin' in names  # Table 4.


@pytest.mark.parametrize('path', ROWS, ids=[os.path.relpath(p, os.path.join(ROOT, 'gin')) for p in ROWS])
def test_row_builds(path, tmp_path):
  match = NAME.match(os.path.basename(path))
  assert match, f'{path} is not named <learner>_<backbone>_<dataset>_<ways>w<shots>s[...].gin (docs/ARCHITECTURE.md, Conventions)'
  gin.clear_config()
  try:
    main.parse_config([path], OVERRIDES)
    built = main.selected_experiment()(workdir=str(tmp_path))
  finally:
    gin.clear_config()
  learner, data, ways, shots = built['learner'], built['data'], built['ways'], built['shots']
  assert learner.name == match['learner']
  assert type(learner.modulation) is MODULATIONS[match['learner']]  # pylint: disable=unidiomatic-typecheck
  assert learner.model.name == match['backbone']
  assert learner.inner_loop.first_order == (match['learner'] != 'maml')
  assert data.name == match['dataset'] and isinstance(data, (FewShotData, SyntheticData))
  assert learner.model.output_shape[-1] == int(match['ways']) == ways and int(match['shots']) == shots
  k = re.search(r'_k(\d+)', match['rest'])
  expected_k = int(k[1]) if k else {'omniglot': 1 if ways == 5 else 5, 'synthetic': 5}.get(match['dataset'], 35)
  assert learner.inner_loop.num_steps == expected_k
  if match['backbone'] == 'resnet12':
    assert learner.clamp == 10.0 and not learner.inner_loop.adapt_bn
  assert bool(built['cross_domain']) == ('crossdomain' in match['rest'])
  if built['cross_domain']:
    assert sorted(built['cross_domain']) == ['cars', 'cub', 'tieredimagenet']
    assert not any(d.normalize for d in built['cross_domain'].values()) and data.normalize
