"""mini-WebVision (Li et al. 2017; the first 50 classes of the Google subset, as in DivideMix
and IDO): about 66k web images with the search query as label.

Layout: ``info/train_filelist_google.txt`` (``google/<query>/<img>.jpg <label>``; labels < 50
kept) with the images under ``google/``; ``info/val_filelist.txt`` (``<img> <label>``, images in
``val_images_256/``) is the test set (``test_acc``). When ``imagenet/val/<class index>/`` holds
the ImageNet-1k validation images of the same 50 classes (DivideMix's layout), they are a second
test set, logged as ``test_acc_imagenet``. ``--set samples_per_epoch=N`` draws a fresh
class-balanced sample per epoch; by default every epoch sees the whole set, as DivideMix's
Train_webvision.py does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.base import DATASETS
from datasets.files import FileDataset, FileIndex, SampledEpochs, image_files, need, parse_pairs

NUM_CLASSES = 50  # mini-WebVision (DivideMix Train_webvision.py num_class=50)


@DATASETS.register("webvision")
class WebVision(FileDataset):
    """mini-WebVision: first 50 Google classes of WebVision 1.0; tested on its val and ImageNet val."""

    @dataclass
    class Options(SampledEpochs):
        samples_per_epoch: int | None = field(default=None, metadata={
            "help": "images drawn (class-balanced) per epoch; default: the whole set each epoch",
            "source": "DivideMix Train_webvision.py iterates the whole mini set"})

    name = "webvision"
    classes = tuple(f"class{i}" for i in range(NUM_CLASSES))  # ImageNet synsets 0-49 (info/synsets.txt)
    real_noise = True
    resize = 256  # DivideMix resizes to 320 and crops 299 for Inception-ResNet; 224 crops here
    # 50 images per class in WebVision's val and ImageNet's val (their documentation); the
    # training count of the first 50 Google classes is not documented
    expected = {"test": 2_500, "imagenet_val": 2_500}
    # the IDO protocol (the data set's defaults: ResNet-50, AdamW, 15 epochs) fine-tunes an
    # ImageNet-pretrained ResNet-50 (IDO paper Sec. 4; author response, WebVision column);
    # DivideMix trains Inception-ResNet-v2 from scratch instead (Train_webvision.py, 100 epochs)
    defaults = {**FileDataset.defaults, "pretrained": True}

    def epoch_samples(self, batch_size: int) -> int | None:
        return self.opts.samples_per_epoch

    def index(self, root: Path) -> FileIndex:
        info = need(root / "info", "WebVision info folder")
        train = [(f, y) for f, y in parse_pairs(info / "train_filelist_google.txt") if y < NUM_CLASSES]
        val = [(f, y) for f, y in parse_pairs(info / "val_filelist.txt") if y < NUM_CLASSES]
        need(root / "val_images_256", "WebVision validation image folder")
        extra, notes = {}, []
        imagenet = root / "imagenet" / "val"
        if imagenet.is_dir():
            files, labels = [], []
            for c in range(NUM_CLASSES):
                folder = imagenet / str(c)
                for f in image_files(folder) if folder.is_dir() else []:
                    files.append(str(f))
                    labels.append(c)
            if files:
                extra["imagenet"] = (files, np.array(labels, dtype=np.int64))
            else:
                notes.append(f"{imagenet} holds no images in class-index folders 0..{NUM_CLASSES - 1}/ "
                             "(DivideMix's layout): only the WebVision val is tested")
        else:
            notes.append(f"no ImageNet validation images at {imagenet}/<class>/: only the WebVision val is tested")
        return FileIndex(
            train_files=[str(root / f) for f, _ in train], train_labels=np.array([y for _, y in train]),
            test_files=[str(root / "val_images_256" / f) for f, _ in val], test_labels=np.array([y for _, y in val]),
            extra_tests=extra, notes=notes)
