"""Tests for on-disk data (:mod:`bench.training.disk`): batches and their order, workers that live
for the run, side streams made ahead by the workers, no image decoded in the training process,
the device-decoding path against the worker path, and exact resume of a run over image files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import make_clothing1m
from helpers import assert_resume_equals_uninterrupted, fake_context, run_cli

from bench.training.data import Prefetcher, epoch_generator, make_view_maker
from bench.training.disk import DiskLoader, DiskPool, draw_geometry, file_transforms, resized_size
from methods.base import MethodContext
from methods.streams import BatchStream

CPU = torch.device("cpu")


def make_loader(files: list[str], labels: np.ndarray, size: int, workers: int, resize: int | None = None,
                decode: str = "cpu", batch_size: int = 5, augment: str = "crop-flip") -> DiskLoader:
    views = make_view_maker((0.0,) * 3, (1 / 255,) * 3, CPU, augment, channels_last=False)
    pool = DiskPool(file_transforms(size, resize, augment), size, resize, augment, "shared", CPU, workers,
                    decode=decode)
    return DiskLoader(pool, "train", files, labels, (labels + 1) % 4, views, batch_size)


@pytest.fixture
def png_files(tmp_path) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        path = tmp_path / f"img{i:02d}.png"
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        pixels[0, 0] = (i, 0, 0)  # identifies the file, to check image and index agree
        Image.fromarray(pixels).save(path)
        files.append(str(path))
    return files


def png_loader(files: list[str], workers: int) -> DiskLoader:
    return make_loader(files, np.arange(12) % 4, 8, workers)


def disk_batches(loader: DiskLoader, seed: int = 1, epoch: int = 0, views=("plain",)) -> list[dict]:
    return list(loader.iterate(views, epoch_generator(seed, epoch, CPU)))


@pytest.mark.parametrize("workers", [0, 2])
def test_disk_loader_batches(png_files, workers):
    loader = png_loader(png_files, workers)
    batches = disk_batches(loader)
    assert [len(b["index"]) for b in batches] == [5, 5, 2]
    idx = torch.cat([b["index"] for b in batches])
    assert sorted(idx.tolist()) == list(range(12))
    for b in batches:
        assert set(b) == {"index", "label", "plain"}  # no clean labels: methods see batches
        assert b["plain"].shape == (len(b["index"]), 3, 8, 8) and b["plain"].dtype == torch.float32
        assert torch.equal(b["label"], loader.labels[b["index"]])
        assert torch.equal(loader.clean[b["index"]], (b["label"] + 1) % 4)  # kept by the loader
        # the red value of pixel (0, 0) is the file's number: the image belongs to its index
        assert torch.equal(b["plain"][:, 0, 0, 0].round().long(), b["index"])
    loader.pool.close()


def test_disk_loader_order_and_augmentation_are_a_function_of_seed_and_epoch(png_files):
    loaders = {w: png_loader(png_files, w) for w in (0, 2)}

    def order(workers: int, seed: int, epoch: int) -> list[int]:
        return torch.cat([b["index"] for b in disk_batches(loaders[workers], seed, epoch)]).tolist()

    assert order(0, 1, 0) == order(0, 1, 0)
    assert order(2, 1, 0) == order(0, 1, 0)  # the workers do not change the order
    assert order(0, 1, 0) != order(0, 1, 1)
    assert order(0, 1, 0) != sorted(order(0, 1, 0))  # shuffled
    a = disk_batches(loaders[2], 1, 0, views=("weak",))
    b = disk_batches(loaders[2], 1, 0, views=("weak",))
    assert all(torch.equal(x["weak"], y["weak"]) for x, y in zip(a, b, strict=True))
    loaders[2].pool.close()


def test_disk_loader_fetches_by_dataset_index(png_files):
    for workers in (0, 2):
        loader = png_loader(png_files, workers)
        b = loader.batch(torch.tensor([7, 2, 9]), ("plain", "strong"), epoch_generator(1, 0, CPU))
        assert b["index"].tolist() == [7, 2, 9] and b["strong"].shape == (3, 3, 8, 8)
        assert b["plain"][:, 0, 0, 0].round().long().tolist() == [7, 2, 9]  # split among workers, in order
        loader.pool.close()


def test_disk_loader_skips_and_counts_undecodable_images(png_files):
    Path(png_files[4]).write_bytes(b"not a png")
    loader = png_loader(png_files, 0)
    idx = torch.cat([b["index"] for b in disk_batches(loader)]).tolist()
    assert sorted(idx) == [i for i in range(12) if i != 4] and loader.skipped == 1


def test_disk_augmentation_does_not_depend_on_the_workers(png_files):
    views = ("weak", "strong")
    loaders = [png_loader(png_files, w) for w in (0, 0, 1, 2)]
    runs = [disk_batches(ld, 1, 0, views=views) for ld in loaders]
    for other in runs[1:]:
        for x, y in zip(runs[0], other, strict=True):
            assert torch.equal(x["index"], y["index"])
            assert all(torch.equal(x[v], y[v]) for v in views)
    again = disk_batches(loaders[0], 1, 1, views=views)
    assert not torch.equal(runs[0][0]["weak"], again[0]["weak"]) or not torch.equal(
        runs[0][0]["index"], again[0]["index"])  # another epoch draws anew
    a = loaders[0].batch(torch.tensor([3, 4]), views, epoch_generator(1, 0, CPU))
    b = loaders[0].batch(torch.tensor([3, 4]), views, epoch_generator(1, 0, CPU))
    assert all(torch.equal(a[v], b[v]) for v in views)  # fetches by index too
    for ld in loaders:
        ld.pool.close()


def worker_pids(loader: DiskLoader, lane: str) -> list[int]:
    return [w.pid for w in loader.pool.lane(lane).loader._iterator._workers]


def test_workers_live_across_passes_and_splits(png_files):
    """Every pass (training, evaluation, another split) runs on the same worker processes."""
    loader = png_loader(png_files, 2)
    test = DiskLoader(loader.pool, "test", png_files[:6], np.arange(6) % 4, None, loader.views, 4)
    disk_batches(loader)
    pids = worker_pids(loader, "main")
    assert len(set(pids)) == 2 and os.getpid() not in pids
    disk_batches(loader, epoch=1, views=("weak",))
    assert [len(b["index"]) for b in test.iterate(("plain",), shuffle=False)] == [4, 2]
    assert worker_pids(loader, "main") == pids and all(p.is_alive() for p in
                                                       loader.pool.lane("main").loader._iterator._workers)
    with pytest.raises(RuntimeError, match="after the workers started"):
        DiskLoader(loader.pool, "late", png_files, np.arange(12) % 4, None, loader.views, 4)
    loader.pool.close()


def stream_ctx(make, fetch=None) -> MethodContext:
    prefetch = None if make is None else Prefetcher(CPU, make)
    return fake_context(device=CPU, prefetch=prefetch, **({} if fetch is None else {"fetch": fetch}))


def test_a_stream_made_by_the_workers_is_the_stream_made_in_this_process(png_files):
    """The same index batches whether the workers make them ahead or ``ctx.fetch`` makes them
    when asked; the images belong to their indices; a stream stops at its count."""
    loader = png_loader(png_files, 2)
    pool = torch.tensor([0, 2, 3, 5, 7, 8, 11])
    ahead = BatchStream(stream_ctx(loader.prefetch), "u", pool, 3, ("plain", "weak"), "partial", count=6)
    asked = BatchStream(stream_ctx(None, lambda idx, vs: loader.batch(idx, vs, epoch_generator(0, 0, CPU))),
                        "u", pool, 3, ("plain", "weak"), "partial")
    for _ in range(6):
        a, b = ahead.next(), asked.next()
        assert torch.equal(a["index"], b["index"]) and set(a["index"].tolist()) <= set(pool.tolist())
        assert torch.equal(a["plain"][:, 0, 0, 0].round().long(), a["index"])
        assert torch.equal(a["plain"], b["plain"])
    with pytest.raises(RuntimeError, match="more than its 6 batches"):
        ahead.next()
    other = BatchStream(stream_ctx(loader.prefetch), "v", pool, 3, ("plain",), "partial", count=2)
    assert not torch.equal(other.next()["index"], BatchStream(stream_ctx(loader.prefetch), "u", pool, 3, ("plain",),
                                                             "partial").next()["index"])  # by name
    loader.pool.close()


def test_streams_taking_turns_on_the_side_lane_lose_nothing(png_files):
    """Two streams asked alternately give what each gives alone (what one had in flight when the
    other took the workers is kept, and its plan goes on where it stopped)."""
    loader = png_loader(png_files, 2)
    pool = torch.arange(12)

    def stream(name: str) -> BatchStream:
        return BatchStream(stream_ctx(loader.prefetch), name, pool, 2, ("plain", "weak"), "drop", count=8)

    alone = {}
    for n in ("a", "b"):
        s = stream(n)
        alone[n] = [s.next() for _ in range(8)]
    a, b = stream("a"), stream("b")
    turns = {"a": [], "b": []}
    for i in range(16):
        n, s = ("a", a) if i % 3 else ("b", b)
        if len(turns[n]) == 8:
            n, s = ("b", b) if n == "a" else ("a", a)
        turns[n].append(s.next())
    for n in ("a", "b"):
        for x, y in zip(alone[n], turns[n], strict=True):
            assert torch.equal(x["index"], y["index"]) and torch.equal(x["weak"], y["weak"])
    loader.pool.close()


def tiny_clothing(tmp: Path) -> Path:
    root = tmp / "c1m"
    make_clothing1m(root)
    return root


def run_args(root: Path, tmp: Path, method: str, workers: int, *extra: str) -> tuple[str, ...]:
    return ("--method", method, "--dataset", "clothing1m", "--data-root", str(root), "--backbone", "smallcnn",
            "--image-size", "8", "--batch-size", "4", "--eval-batch-size", "8", "--epochs", "2", "--workers",
            str(workers), "--set", "samples_per_epoch=16", "--optimizer", "sgd", "--lr", "0.01", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 0])
def test_no_image_is_decoded_in_the_training_process(tmp_path, monkeypatch, workers):
    """With workers, a DivideMix run (warm-up, then co-divided steps drawing unlabeled batches)
    opens no image file in the training process: training, its whole-data passes and the
    evaluation all read through the workers. Without workers (the control) it does, so the probe
    sees what it looks for."""
    from PIL import Image

    root = tiny_clothing(tmp_path)
    main, opened, real = os.getpid(), [], Image.open

    def probe(*args, **kwargs):
        if os.getpid() == main:
            opened.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "open", probe)
    out = run_cli(tmp_path, *run_args(root, tmp_path, "dividemix", workers, "--set", "warmup_epochs=1"))
    assert out["status"] == "finished" and out["epochs_done"] == 2
    assert (opened == []) if workers else len(opened) > 16, opened[:3]


@pytest.mark.slow
def test_a_killed_run_on_image_files_resumes_exactly(tmp_path):
    """DivideMix over a Clothing1M-layout tree with workers, stopped after the warm-up and
    resumed: the curves and weights of the uninterrupted run."""
    root = tiny_clothing(tmp_path)
    args = run_args(root, tmp_path, "dividemix", 2, "--set", "warmup_epochs=1", "--epochs", "3", "--test-subset", "7")
    assert_resume_equals_uninterrupted(tmp_path, args, 2, ("test_acc", "train_loss", "loss_u"))


# --- decoding on the device: the same crops as the workers' -------------------------------------------


@pytest.fixture
def jpeg_files(tmp_path) -> list[str]:
    """Photo-like JPEGs of several shapes (smooth colour fields: resizing them is well defined)."""
    from PIL import Image

    files = []
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate([(50, 40), (40, 50), (36, 36), (61, 45), (45, 70), (80, 48)]):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        phase = rng.uniform(0, 6, 3)
        img = np.stack([127 + 120 * np.sin(4 * xx + 3 * yy + p) for p in phase], -1).astype(np.uint8)
        path = tmp_path / f"p{i}.jpg"
        Image.fromarray(img).save(path, quality=95)
        files.append(str(path))
    return files


@pytest.mark.parametrize("resize,augment", [(36, "crop-flip"), (36, "none"), (None, "crop-flip")])
def test_device_decoding_gives_the_workers_crops(jpeg_files, resize, augment):
    """``--decode gpu`` wired on the CPU: JPEG bytes decoded by torchvision, resized, cropped and
    flipped with the geometry the workers drew, against the workers' PIL path with the same
    draws. Same indices, shapes and flips; pixels within 2 levels on average, 99% within 12
    (PIL's and torch's antialiased bilinear resize differ at edges; no resize: equal)."""
    size = 32
    labels = np.arange(len(jpeg_files)) % 4
    cpu = make_loader(jpeg_files, labels, size, 0, resize, "cpu", 3, augment)
    dev = make_loader(jpeg_files, labels, size, 1, resize, "gpu", 3, augment)
    views = ("plain", "train", "weak", "weak2")
    for a, b in zip(disk_batches(cpu, views=views), disk_batches(dev, views=views), strict=True):
        assert torch.equal(a["index"], b["index"])
        for v in views:
            diff = (a[v] - b[v]).abs()
            assert a[v].shape == b[v].shape == (len(a["index"]), 3, size, size)
            assert diff.mean() <= 2.0 and diff.flatten().quantile(0.99) <= 12, (v, diff.mean(), diff.max())
            if resize is None:
                assert diff.max() <= 1  # no resize: the same pixels, up to the decoders' rounding
    dev.pool.close()


def test_device_decoding_makes_strong_views_and_drops_bad_files(jpeg_files):
    Path(jpeg_files[2]).write_bytes(b"\xff\xd8 not a jpeg")
    dev = make_loader(jpeg_files, np.arange(6) % 4, 32, 0, 36, "gpu", 6)
    (batch,) = disk_batches(dev, views=("strong", "ra-cutout"))
    assert sorted(batch["index"].tolist()) == [0, 1, 3, 4, 5] and dev.skipped == 1
    assert batch["strong"].shape == (5, 3, 32, 32) and batch["ra-cutout"].shape == (5, 3, 32, 32)


def test_geometry_draws_what_the_transforms_draw():
    """draw_geometry consumes the generator as RandomCrop + RandomHorizontalFlip do: after it,
    the next draw is the same as after the transforms."""
    from PIL import Image

    img = Image.new("RGB", (50, 40))
    for resize, aug in ((36, "crop-flip"), (None, "crop-flip"), (36, "none"), (36, "flip")):
        torch.manual_seed(5)
        file_transforms(32, resize, aug)["train"](img)
        after_transforms = torch.rand(1)
        torch.manual_seed(5)
        draw_geometry(40, 50, 32, resize, aug)
        assert torch.equal(torch.rand(1), after_transforms), (resize, aug)
    assert resized_size(40, 50, 36) == (36, 45) and resized_size(50, 40, 36) == (45, 36)


def test_decode_gpu_is_refused_without_cuda(tmp_path, capsys):
    from bench.cli import main

    root = tiny_clothing(tmp_path)
    code = main(["run", *run_args(root, tmp_path, "ce", 0, "--decode", "gpu"), "--out", str(tmp_path / "o"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--decode gpu needs a CUDA device" in err[0], err


@pytest.mark.slow
def test_a_run_with_workers_and_its_logging_process_ends(tmp_path):
    """The workers live for the run and are forked from it, so they hold copies of the pipe to
    the MLflow logging process: the run must end them (and tell the logger to exit) rather than
    wait for an end of input that never comes. A real ``python -m bench run``, its own logger."""
    import subprocess
    import sys

    root = tiny_clothing(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TRACKING"}  # the logging child, as users run
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    args = [*run_args(root, tmp_path, "dividemix", 2, "--set", "warmup_epochs=1"), "--out", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    done = subprocess.run([sys.executable, "-m", "bench", "run", *args], env=env, capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"status": "finished"' in done.stdout.splitlines()[-1]


def test_device_decoding_takes_cmyk_and_png_from_the_workers(tmp_path):
    """Files the device decoder may not take (a CMYK JPEG, a PNG) are decoded by the workers and
    finished on the device like the rest: same pixels as the worker path."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    files = [str(tmp_path / "c.jpg"), str(tmp_path / "p.png")]
    cpu = make_loader(files, np.arange(2), 32, 0, 36, "cpu", 2, "none")
    dev = make_loader(files, np.arange(2), 32, 0, 36, "gpu", 2, "none")
    (a,), (b,) = disk_batches(cpu, views=("plain",)), disk_batches(dev, views=("plain",))
    assert dev.skipped == 0 and torch.equal(a["index"], b["index"])
    assert (a["plain"] - b["plain"]).abs().mean() <= 2.0


def test_a_stream_made_during_the_phases_starts_at_once_and_gives_the_same_batches(png_files):
    """While the trainer runs an epoch's phases (``live``), a stream starts decoding when made if
    the side lane is free; a second one made meanwhile waits for its first use. Either way the
    batches are those of a stream started at its first ``next``."""
    loader = png_loader(png_files, 2)
    live = fake_context(device=CPU, prefetch=Prefetcher(CPU, loader.prefetch, live=True))
    pool = torch.arange(12)
    first = BatchStream(live, "a", pool, 3, ("plain",), "partial", count=4)
    lane = loader.pool.lane("side")
    assert lane.owner is not None and lane.owner.plan is not None  # begun before any next()
    owner = lane.owner
    second = BatchStream(live, "b", pool, 3, ("plain",), "partial", count=4)
    assert lane.owner is owner  # the lane was busy: "b" waits
    got = {"a": [first.next() for _ in range(4)], "b": [second.next() for _ in range(4)]}
    for name, batches in got.items():
        lazy = BatchStream(stream_ctx(loader.prefetch), name, pool, 3, ("plain",), "partial", count=4)
        for x in batches:
            y = lazy.next()
            assert torch.equal(x["index"], y["index"]) and torch.equal(x["plain"], y["plain"])
    loader.pool.close()
