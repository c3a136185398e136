"""Miniature copies of each benchmark's real on-disk layout (as each data set's release ships it), for the loader tests.

Each ``make_*`` writes a tiny data set in exactly the real format (pickled CIFAR batches in the
real dict layout, a torch-saved CIFAR-N label dict with the real keys, Clothing1M's text
files, WebVision's info lists, Tiny-ImageNet's val annotations, Animal-10N's file-name labels,
Food-101N's tsv files) with small JPEGs, and returns what a loader should find.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Made:
    root: Path
    train_labels: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    train_clean: np.ndarray | None = None
    extra: dict[str, int] = field(default_factory=dict)


def _jpeg(path: Path, seed: int, size: int = 12) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="JPEG")


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    """Every class present, then random."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(classes), rng.integers(0, classes, max(n - classes, 0))])[:n]


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root: Path, per_batch: int = 6, test: int = 10) -> Made:
    folder = root / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    labels = _labels(5 * per_batch, 10, 1)
    for i in range(5):
        part = labels[i * per_batch:(i + 1) * per_batch]
        _pickle(folder / f"data_batch_{i + 1}", {"batch_label": f"training batch {i + 1} of 5",
                                                  "labels": part.tolist(),
                                                  "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                                  "filenames": [f"img{j}.png" for j in range(per_batch)]})
    test_labels = _labels(test, 10, 2)
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(),
                                    "data": rng.integers(0, 256, (test, 3072), dtype=np.uint8),
                                    "filenames": [f"t{j}.png" for j in range(test)]})
    _pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                      "frog", "horse", "ship", "truck"],
                                      "num_cases_per_batch": per_batch, "num_vis": 3072})
    return Made(root, labels, test_labels, 10)


def make_cifar100(root: Path, train: int = 120, test: int = 20) -> Made:
    """Fine labels 0..99; coarse labels from a fixed fine -> coarse table (5 fine per coarse)."""
    folder = root / "cifar-100-python"
    rng = np.random.default_rng(0)
    coarse_of = np.random.default_rng(3).permutation(np.repeat(np.arange(20), 5))
    fine = _labels(train, 100, 1)
    test_fine = _labels(test, 100, 2)
    for name, labels in (("train", fine), ("test", test_fine)):
        _pickle(folder / name, {"filenames": [f"{name}{j}.png" for j in range(len(labels))],
                                "batch_label": f"{name}ing batch 1 of 1", "fine_labels": labels.tolist(),
                                "coarse_labels": coarse_of[labels].tolist(),
                                "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                              "coarse_label_names": [f"c{i}" for i in range(20)]})
    return Made(root, fine, test_fine, 100, extra={"coarse_of": coarse_of})  # type: ignore[dict-item]


def make_cifar10n(root: Path) -> Made:
    import torch

    made = make_cifar10(root)
    n = len(made.train_labels)
    rng = np.random.default_rng(5)
    flip = lambda rate: np.where(rng.random(n) < rate, (made.train_labels + 1) % 10, made.train_labels)  # noqa: E731
    labels = {"clean_label": made.train_labels.copy(), "aggre_label": flip(0.1), "worse_label": flip(0.4),
              "random_label1": flip(0.17), "random_label2": flip(0.18), "random_label3": flip(0.18)}
    torch.save(labels, root / "CIFAR-10_human.pt")
    made.train_clean, made.extra = made.train_labels, {"worse": labels["worse_label"]}  # type: ignore[dict-item]
    return made


def make_cifar100n(root: Path) -> Made:
    import torch

    made = make_cifar100(root)
    n, coarse_of = len(made.train_labels), made.extra["coarse_of"]
    rng = np.random.default_rng(6)
    noisy = np.where(rng.random(n) < 0.4, (made.train_labels + 1) % 100, made.train_labels)
    data = {"clean_label": made.train_labels.copy(), "noisy_label": noisy,
            "clean_coarse_label": coarse_of[made.train_labels], "noisy_coarse_label": coarse_of[noisy]}
    (root / "data").mkdir()
    torch.save(data, root / "data" / "CIFAR-100_human.pt")  # where the CIFAR-N repository keeps it
    made.extra["noisy"] = noisy
    return made


def make_tiny_imagenet(root: Path, per_class: int = 2, classes: int = 4) -> Made:
    wnids = [f"n0{i:07d}" for i in (7, 3, 9, 1)][:classes]  # not sorted: the loader sorts
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    order = {w: i for i, w in enumerate(sorted(wnids))}
    train = []
    for w in wnids:
        for j in range(per_class):
            _jpeg(root / "train" / w / "images" / f"{w}_{j}.JPEG", hash((w, j)) % 1000, 64)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        train += [order[w]] * per_class
    lines, test = [], []
    for j, w in enumerate(wnids * 2):
        _jpeg(root / "val" / "images" / f"val_{j}.JPEG", 500 + j, 64)
        lines.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
        test.append(order[w])
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train_sorted = np.array([order[w] for w in sorted(wnids) for _ in range(per_class)])
    return Made(root, train_sorted, np.array(test), classes, extra={"wnids": len(wnids)})


def make_clothing1m(root: Path, annotations: bool = True) -> Made:
    lists = root / "annotations" if annotations else root
    lists.mkdir(parents=True, exist_ok=True)
    noisy_keys = [f"images/{i % 10}/{i:02d}/{i}.jpg" for i in range(28)]
    clean_only = [f"images/9/99/c{i}.jpg" for i in range(14)]
    noisy = {k: int(y) for k, y in zip(noisy_keys, _labels(28, 14, 1), strict=True)}
    clean = {k: int(y) for k, y in zip(clean_only, _labels(14, 14, 2), strict=True)}
    clean[noisy_keys[0]] = (noisy[noisy_keys[0]] + 1) % 14  # an overlap key whose noisy label is wrong
    clean[noisy_keys[1]] = noisy[noisy_keys[1]]  # and one whose noisy label is right
    for k in list(noisy) + clean_only:
        _jpeg(root / k, len(k))
    (lists / "noisy_label_kv.txt").write_text("".join(f"{k} {y}\n" for k, y in noisy.items()))
    (lists / "clean_label_kv.txt").write_text("".join(f"{k} {y}\n" for k, y in clean.items()))
    (lists / "noisy_train_key_list.txt").write_text("".join(f"{k}\n" for k in noisy_keys))
    (lists / "clean_train_key_list.txt").write_text("".join(f"{k}\n" for k in clean_only[:4]))
    (lists / "clean_val_key_list.txt").write_text("".join(f"{k}\n" for k in clean_only[4:7]))
    (lists / "clean_test_key_list.txt").write_text("".join(f"{k}\n" for k in clean_only[7:]))
    (lists / "category_names_eng.txt").write_text("T-Shirt\nShirt\nKnitwear\nChiffon\nSweater\nHoodie\n"
                                                  "Windbreaker\nJacket\nDowncoat\nSuit\nShawl\nDress\nVest\n"
                                                  "Underwear\n")
    test = np.array([clean[k] for k in clean_only[7:]])
    return Made(root, np.array(list(noisy.values())), test, 14)


def make_webvision(root: Path, imagenet: bool = True) -> Made:
    (root / "info").mkdir(parents=True)
    train_lines, train = [], []
    for j, y in enumerate([*range(50), 50, 51, 999, 3, 7]):  # labels >= 50 are not mini-WebVision
        rel = f"google/q{y:04d}/{j}.jpg"
        _jpeg(root / rel, j)
        train_lines.append(f"{rel} {y}")
        if y < 50:
            train.append(y)
    (root / "info" / "train_filelist_google.txt").write_text("\n".join(train_lines) + "\n")
    val_lines, val = [], []
    for j, y in enumerate([0, 1, 2, 49, 60]):
        _jpeg(root / "val_images_256" / f"val{j}.jpg", 100 + j)
        val_lines.append(f"val{j}.jpg {y}")
        if y < 50:
            val.append(y)
    (root / "info" / "val_filelist.txt").write_text("\n".join(val_lines) + "\n")
    extra = {}
    if imagenet:
        for c in (0, 1, 49):
            _jpeg(root / "imagenet" / "val" / str(c) / f"ILSVRC2012_val_{c}.JPEG", 200 + c)
        extra["imagenet"] = 3
    return Made(root, np.array(train), np.array(val), 50, extra=extra)


def make_animal10n(root: Path) -> Made:
    train = _labels(14, 10, 1)
    test = _labels(10, 10, 2)
    for split, labels in (("training", train), ("testing", test)):
        for j, y in enumerate(labels):
            _jpeg(root / split / f"{y}_{j:05d}.jpg", j, 64)
    order = lambda labels: labels[np.argsort([f"{y}_{j:05d}.jpg" for j, y in enumerate(labels)])]  # noqa: E731
    return Made(root, order(train), order(test), 10)


def make_food101n(root: Path, classes: int = 5) -> Made:
    names = [f"food_{i}" for i in range(classes)]
    rel, food = root / "Food-101N_release", root / "food-101"
    (rel / "meta").mkdir(parents=True)
    (food / "meta").mkdir(parents=True)
    (rel / "meta" / "classes.txt").write_text("class_name\n" + "\n".join(names) + "\n")
    keys, train = [], []
    for j, y in enumerate(_labels(12, classes, 1)):
        key = f"{names[y]}/{j:032x}.jpg"
        _jpeg(rel / "images" / key, j)
        keys.append(key)
        train.append(y)
    (rel / "meta" / "imagelist.tsv").write_text("class_name/key\n" + "\n".join(keys) + "\n")
    (rel / "meta" / "verified_train.tsv").write_text(
        "class_name/key\tverification_label\n" + "".join(f"{k}\t{int(i % 4 != 0)}\n" for i, k in enumerate(keys[:8])))
    (rel / "meta" / "verified_val.tsv").write_text(
        "class_name/key\tverification_label\n" + "".join(f"{k}\t1\n" for k in keys[8:]))
    test_keys, test = [], []
    for j, y in enumerate(_labels(7, classes, 2)):
        key = f"{names[y]}/{1000 + j}"
        _jpeg(food / "images" / f"{key}.jpg", 300 + j)
        test_keys.append(key)
        test.append(y)
    (food / "meta" / "test.txt").write_text("\n".join(test_keys) + "\n")
    (food / "meta" / "classes.txt").write_text("\n".join(names) + "\n")
    return Made(root, np.array(train), np.array(test), classes, extra={"verified": 12})


def make_folder(root: Path, with_labels: bool = False) -> Made:
    names = ["cat", "dog", "fox"]
    train, test = [], []
    lines = []
    for split, per, out in (("train", 4, train), ("test", 2, test)):
        for i, name in enumerate(names):
            for j in range(per):
                _jpeg(root / split / name / f"{j}.png".replace(".png", ".jpg"), 10 * i + j)
                out.append(i)
                if split == "train":
                    lines.append(f"{name}/{j}.jpg {(i + 1) % 3 if j == 0 else i}")
    made = Made(root, np.array(train), np.array(test), 3)
    if with_labels:
        (root / "labels.txt").write_text("\n".join(lines) + "\n")
        made.train_clean = made.train_labels
        made.train_labels = np.array([int(line.split()[1]) for line in lines])
    return made


MAKERS = {"cifar10": make_cifar10, "cifar100": make_cifar100, "cifar10n": make_cifar10n,
          "cifar100n": make_cifar100n, "tiny-imagenet": make_tiny_imagenet, "clothing1m": make_clothing1m,
          "webvision": make_webvision, "animal10n": make_animal10n, "food101n": make_food101n,
          "folder": make_folder}
