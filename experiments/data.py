"""Datasets for the experiments: digits, teacher, fashion_mnist, mnist, cifar10.

Images come back as float32 arrays of shape (N, H, W, C) in [0, 1], labels as
int32 class ids. `digits` and `teacher` never touch the network; Fashion-MNIST
is read from a local folder of IDX files when one exists (Debian's
`dataset-fashion-mnist` package installs them in
/usr/share/datasets/fashion-mnist); everything else goes through
`keras.datasets`, which downloads on first use.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "DST_DATA_DIR"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
OFFLINE_CHOICES = (
    "Offline choices: `dataset: digits` (scikit-learn, bundled), `dataset: "
    "teacher` (synthetic teacher-student), or `dataset: fashion_mnist` read from "
    f"a local folder of the 4 IDX .gz files: set `data_dir` in the config or the "
    f"{DATA_DIR_ENV} environment variable, or install Debian's package "
    f"(`apt-get install dataset-fashion-mnist`, files in {FASHION_MNIST_DIR})."
)


class DatasetUnavailableError(RuntimeError):
    """A dataset could be neither found locally nor downloaded."""


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load(
    name: str,
    *,
    data_dir: str | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> Dataset:
    """Loads dataset `name`, optionally keeping only the first samples.

    Raises:
        DatasetUnavailableError: when a download fails or `data_dir` lacks files.
    """
    loaders = {"digits": _digits, "teacher": _teacher, "fashion_mnist": _fashion_mnist,
               "mnist": _mnist, "cifar10": _cifar10}
    if name not in loaders:
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {sorted(loaders)}.")
    loader = loaders[name]
    (x_train, y_train), (x_test, y_test) = (
        loader(data_dir) if name in ("fashion_mnist", "mnist") else loader()
    )
    x_train, y_train = x_train[:max_train_samples], y_train[:max_train_samples]
    x_test, y_test = x_test[:max_test_samples], y_test[:max_test_samples]
    return Dataset(name, x_train, y_train.astype("int32"), x_test,
                   y_test.astype("int32"), 10)


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one IDX file (gzipped or not) of unsigned bytes into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_idx_folder(folder: str | Path):
    """Reads the 4 MNIST-format IDX files in `folder` (`.gz` or plain).

    Returns:
        ((x_train, y_train), (x_test, y_test)) as uint8 arrays.

    Raises:
        FileNotFoundError: naming the missing files.
    """
    folder = Path(folder)
    paths, missing = {}, []
    for key, stem in IDX_FILES.items():
        found = [folder / (stem + ext) for ext in (".gz", "") if (folder / (stem + ext)).is_file()]
        if found:
            paths[key] = found[0]
        else:
            missing.append(stem + ".gz")
    if missing:
        raise FileNotFoundError(f"{folder} lacks the IDX file(s) {missing}.")
    arrays = {key: read_idx(p) for key, p in paths.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


# -- datasets -------------------------------------------------------------------
def _images(split):
    (x_train, y_train), (x_test, y_test) = split

    def fix(x):
        x = np.asarray(x, dtype="float32") / 255.0
        return x[..., None] if x.ndim == 3 else x

    return (fix(x_train), np.asarray(y_train).reshape(-1)), (
        fix(x_test), np.asarray(y_test).reshape(-1))


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def _teacher(n_train=8000, n_test=2000, dim=64, hidden=128, classes=10, seed=1234):
    """Gaussian inputs labelled by a fixed random 2-layer tanh teacher network."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 1.0 / np.sqrt(dim), (dim, hidden))
    w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, classes))
    x = rng.normal(size=(n_train + n_test, dim)).astype("float32")
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _local_or_download(name, data_dir, download):
    if data_dir is not None:
        try:
            return _images(read_idx_folder(data_dir))
        except FileNotFoundError as err:
            raise DatasetUnavailableError(
                f"Cannot read {name} from data_dir {data_dir!r}: {err} Put the "
                "4 IDX files there, or remove `data_dir` to download."
            ) from err
    try:
        return _images(download())
    except Exception as err:  # noqa: BLE001 - any download failure gets the advice
        raise DatasetUnavailableError(
            f"Could not load dataset {name!r}: keras.datasets failed to download "
            f"it ({type(err).__name__}: {err}). {OFFLINE_CHOICES}"
        ) from err


def _fashion_mnist(data_dir=None):
    import keras

    folder = data_dir or os.environ.get(DATA_DIR_ENV)
    if folder is None and all(
        any((Path(FASHION_MNIST_DIR) / (stem + ext)).is_file() for ext in (".gz", ""))
        for stem in IDX_FILES.values()
    ):
        folder = FASHION_MNIST_DIR
    return _local_or_download(
        "fashion_mnist", folder, keras.datasets.fashion_mnist.load_data)


def _mnist(data_dir=None):
    import keras

    return _local_or_download("mnist", data_dir, keras.datasets.mnist.load_data)


def _cifar10():
    import keras

    return _local_or_download("cifar10", None, keras.datasets.cifar10.load_data)
