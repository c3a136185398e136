"""The host-device sync detector of tests/helpers.py (``SyncRecorder``) on the CPU: it sees
each way a step can make the host wait for CUDA, says where, and passes the sync-free forms the
methods use instead. The methods themselves are checked in tests/test_registry_entries.py."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from tests.helpers import SyncRecorder, record_syncs

HERE = str(Path(__file__).resolve().parent) + "/"


def ops_of(fn) -> dict[int, set[str]]:
    """The syncing ops ``fn`` runs, by line (counted from its ``def``)."""
    with record_syncs(SyncRecorder(roots=(HERE,))) as rec:
        fn()
    assert all(s.path == "tests/test_syncs.py" and s.function == fn.__name__ for s in rec.sites), rec.sites
    out: dict[int, set[str]] = {}
    for s in rec.sites:
        out.setdefault(s.line - fn.__code__.co_firstlineno, set()).add(s.op)
    return out


def test_each_sync_is_seen_where_it_happens():
    x, mask, y = torch.arange(6.0), torch.tensor([True, False] * 3), torch.tensor([0, 2, 1])

    def syncing():
        float(x.sum()), bool(mask.any()), int(mask.sum()), x.sum().item()  # noqa: B018
        x[mask], x[:, None][mask, 0], torch.where(mask), mask.nonzero(), x.masked_select(mask)  # noqa: B018
        torch.unique(y), torch.bincount(y), torch.repeat_interleave(y)  # noqa: B018
        x.tolist(), x.cpu(), x.numpy(), F.one_hot(y)  # noqa: B018
        z = x.clone()
        z[mask] = x[:3]

    assert ops_of(syncing) == {1: {"_local_scalar_dense"}, 2: {"index", "nonzero", "masked_select"},
                               3: {"_unique2", "bincount", "repeat_interleave"},
                               4: {"tolist", "cpu", "numpy", "_local_scalar_dense"},  # one_hot reads the max
                               6: {"index_put_"}}  # a tensor value: CUDA's index_put_ makes indices of the mask


def test_the_sync_free_forms_pass():
    x, mask, y = torch.arange(6.0), torch.tensor([True, False] * 3), torch.tensor([0, 2, 1])

    def sync_free():
        w = mask.to(x.dtype)
        (x * w).sum() / w.sum().clamp_min(1), torch.where(mask, x, 0.0), x.masked_fill(mask, 0)  # noqa: B018
        x[torch.nonzero_static(mask, size=3).squeeze(1)], torch.argsort(x, stable=True)[:2], x.topk(2)  # noqa: B018
        torch.zeros(3).index_add_(0, y, torch.ones(3)), F.one_hot(y, 3)  # noqa: B018
        torch.repeat_interleave(y, y, output_size=3)
        z = x.clone()
        z[mask] = 0.0  # a Python scalar: CUDA's masked_fill

    assert ops_of(sync_free) == {}


def test_optimiser_internals_are_not_counted():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([p])

    def step():
        p.grad = torch.ones(2)
        opt.step()  # its step counter is a CPU tensor on CUDA too

    assert ops_of(step) == {}
