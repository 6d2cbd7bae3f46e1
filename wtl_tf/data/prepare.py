"""Finds prepared records for a dataset, converting the raw files with the Beam pipeline on first use.

Where things are looked for (first hit wins):
  records: the `records_dir` argument, else $WTL_RECORDS_DIR/<dataset>, else ~/.cache/wtl_tf/records/<dataset>;
           with pipeline `options` (e.g. {'split': 'osaka'}) that directory gets the suffix `-k=v[-k=v...]` (sorted
           keys), so conversions with different options never mix;
  raw:     the `raw_dir` argument, else $WTL_DATA_DIR/<dataset>, else Debian's /usr/share/datasets/fashion-mnist
           for Fashion-MNIST.
"""
import os
from typing import Mapping, Optional

from wtl_tf.data import records

DEBIAN_FASHION = '/usr/share/datasets/fashion-mnist'


def default_records_dir(dataset: str) -> str:
  base = os.environ.get('WTL_RECORDS_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'wtl_tf', 'records')
  return os.path.join(base, dataset)


def default_raw_dir(dataset: str) -> Optional[str]:
  data_dir = os.environ.get('WTL_DATA_DIR')
  if data_dir and os.path.isdir(os.path.join(data_dir, dataset)):
    return os.path.join(data_dir, dataset)
  if dataset == 'fashion_mnist' and os.path.isdir(DEBIAN_FASHION):
    return DEBIAN_FASHION
  return None


def options_suffix(options: Optional[Mapping[str, object]]) -> str:
  """'-k=v-k2=v2' (sorted keys) for pipeline options, '' without any."""
  return ''.join(f'-{k}={v}' for k, v in sorted((options or {}).items()))


def ensure_records(dataset: str, records_dir: Optional[str] = None, raw_dir: Optional[str] = None,
                   beam_args=(), verbose: bool = True,
                   options: Optional[Mapping[str, object]] = None) -> records.DatasetSpec:
  """The dataset's spec, running `pipelines.main` once (with pipeline `options`) if no records exist yet."""
  records_dir = (records_dir or default_records_dir(dataset)) + options_suffix(options)
  if os.path.exists(os.path.join(records_dir, records.SPEC_FILE)):
    return records.DatasetSpec.load(records_dir)
  raw_dir = raw_dir or default_raw_dir(dataset)
  if raw_dir is None:
    hint = (' or install Debian\'s dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)'
            if dataset == 'fashion_mnist' else '')
    raise records.DataError(
        f'no prepared {dataset} records in {records_dir} and no raw {dataset} files found: set WTL_DATA_DIR to a '
        f'directory holding {dataset}/ (the IDX .gz files for MNIST-like data){hint}, or convert them yourself with '
        f'`python -m pipelines.main --dataset={dataset} --input_dir=RAW --output_dir={records_dir}'
        + ''.join(f' --option={k}={v}' for k, v in sorted((options or {}).items())) + '`')
  from pipelines import main as pipelines_main  # pylint: disable=g-import-not-at-top  (Beam is heavy)
  if verbose:
    print(f'Converting {dataset}{options_suffix(options)} from {raw_dir} to {records_dir} (once) ...', flush=True)
  options = {k: v if isinstance(v, (bool, str)) else str(v) for k, v in (options or {}).items()}
  try:
    pipelines_main.run(dataset, raw_dir, records_dir, beam_args=list(beam_args), quiet=not verbose,
                       options=options or None)
  except (FileNotFoundError, ValueError) as e:
    raise records.DataError(str(e)) from None
  return records.DatasetSpec.load(records_dir)
