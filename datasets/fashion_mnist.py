"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60k + 10k 28x28 grey images, 10 classes.

Read from the four IDX .gz files in ``--data-root`` or, when that is not given, in
``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS, Dataset, RawSplits

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError; a cut-off file ends in EOFError
        raise UsageError(f"{path} is not a readable gzip file ({type(exc).__name__}); "
                         "reinstall it with 'apt-get install --reinstall dataset-fashion-mnist'") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UsageError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UsageError(f"{path} is truncated: its header is cut off")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).copy()  # writable
    if body.size != int(np.prod(dims)):
        raise UsageError(f"{path} is truncated: header says {dims}, body has {body.size} bytes")
    return body.reshape(dims)


@DATASETS.register("fashion-mnist")
class FashionMNIST(Dataset):
    """Fashion-MNIST, 60k/10k 28x28 grey, 10 classes; Debian's dataset-fashion-mnist by default."""

    name = "fashion-mnist"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    channels = 1
    image_size = 28
    mean = (0.2860,)  # training-set pixel mean and std on [0, 1]
    std = (0.3530,)
    # Our semantic map for `asym` (Fashion-MNIST has no published one):
    # tops that look alike swap (T-shirt<->Shirt, Pullover<->Coat), footwear moves along
    # Sandal->Sneaker->Ankle boot->Sneaker; Trouser, Dress and Bag stay. 7 of 10 classes move.
    asym_map = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 9, 9: 7}
    # CPU protocol (README, `fmnist-cpu`): the small CNN, Adam lr 1e-3, batch 128.
    defaults = {"backbone": "smallcnn", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                "batch_size": 128, "epochs": 20, "augment": "crop-flip"}

    def read(self, root: str | None) -> RawSplits:
        folder = self._find(root)
        arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
        return RawSplits(
            train_images=arrays["train_images"][:, None],
            train_labels=arrays["train_labels"].astype(np.int64),
            test_images=arrays["test_images"][:, None],
            test_labels=arrays["test_labels"].astype(np.int64),
        )

    def check_root(self, root: str | None) -> None:
        self._find(root)

    @staticmethod
    def _find(root: str | None) -> Path:
        candidates = [Path(root)] if root else [DEBIAN_DIR]
        for folder in candidates:
            if all((folder / name).is_file() for name in FILES.values()):
                return folder
        looked = ", ".join(str(c) for c in candidates)
        raise UsageError(
            f"Fashion-MNIST files ({', '.join(FILES.values())}) not found in {looked}; "
            "install them with 'apt-get install dataset-fashion-mnist' or pass --data-root DIR"
        )
