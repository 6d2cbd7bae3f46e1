"""Shared test set-up: quiet TensorFlow, the real-data root."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def data_root():
  """Directory with the real raw datasets (WTL_DATA_DIR); tests using it skip when it is absent."""
  root = os.environ.get('WTL_DATA_DIR')
  if not root or not os.path.isdir(root):
    pytest.skip('real data not available: set WTL_DATA_DIR to a directory holding the raw data sets')
  return root


@pytest.fixture(scope='session', autouse=True)
def private_records_dir(tmp_path_factory):
  """Records converted during tests go to a temporary directory, never to the user's ~/.cache."""
  if 'WTL_RECORDS_DIR' not in os.environ:
    os.environ['WTL_RECORDS_DIR'] = str(tmp_path_factory.mktemp('records'))
  yield os.environ['WTL_RECORDS_DIR']
