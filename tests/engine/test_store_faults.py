"""The store on a really full disk (a small tmpfs, as root), two engines of one process on one ``cache_dir``, the
files' modes under the umask, checkpoints named twice or folders among them, and ``cache_dir`` names the filesystem
cannot hold."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets._io import atomic_write, umask
from tracin_widgets.influence import TracInCPFast, TracInWarning, _files, _store
from tracin_widgets.influence._cache import check_cache_dir_name
from tracin_widgets.influence._checkpoints import resolve_checkpoints

from .oracle import assert_scores_close
from .problems import Problem as StoreProblem

N = 3000


def _count_rows(monkeypatch) -> list[int]:
    rows: list[int] = []
    real = TracInCPFast._factors_of

    def spy(self, batches, *a, **k):
        if a[3] == "training batch":
            rows.append(sum(b[0].shape[0] for b in batches))
        return real(self, batches, *a, **k)

    monkeypatch.setattr(TracInCPFast, "_factors_of", spy)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# a really full disk
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_save_html_on_a_full_disk_names_the_file(small_disk):
    from tracin_widgets.widget import _html

    path = small_disk / "review.html"
    with pytest.raises(OSError, match=rf"save_html cannot write '{re.escape(str(path))}': No space left on device"):
        _html.write(path, "x" * (1 << 20))  # 1 MiB on a 256 KiB disk
    assert not path.exists()  # no half file


def test_a_really_full_disk_keeps_the_complete_blocks(tmp_path, small_disk, monkeypatch):
    """Factors that live only in the store (streamed) on a disk that fills up: the blocks written completely are
    recorded (the manifest's rewrite has its room kept free), and after making room only the rest is computed."""
    p = StoreProblem(tmp_path, n=N)  # about 900 KB of factors and checksums: more than the disk holds
    p.cache = small_disk / "cache"
    expected = p.engine(cache=False).influence(p.test)
    with pytest.raises(OSError, match=r"\(the disk is full\)\. The (\d+) rows written before are kept") as e:
        p.engine(max_memory=4000).fit()
    kept = int(e.value.strerror.split("The ")[1].split(" rows")[0])
    m = json.loads((p.store() / "manifest.json").read_text())
    assert 0 < kept == m["rows_complete"] < N and m["complete"] is False
    subprocess.run(["mount", "-o", "remount,size=4m", "tmpfs", str(small_disk)], check=True)
    rows = _count_rows(monkeypatch)
    got = p.engine(max_memory=4000).influence(p.test)
    assert sum(rows) == N - kept  # resumed after the recorded blocks
    assert_scores_close(got, expected)
    assert not (p.store() / ".reserve").exists()  # a complete store keeps no reserve


def test_the_reserve_is_held_while_a_store_is_incomplete(tmp_path, monkeypatch):
    p = StoreProblem(tmp_path, n=N)
    seen = []
    real = _store.StoreWriter._record

    def record(self, rows):
        seen.append((self.store.folder / ".reserve").stat().st_size)
        return real(self, rows)

    monkeypatch.setattr(_store.StoreWriter, "_record", record)
    monkeypatch.setattr(_store.StoreWriter, "commit_seconds", 0.0)
    p.engine().fit()
    assert len(seen) > 2 and set(seen) == {_store.MANIFEST_ROOM}
    assert not (p.store() / ".reserve").exists()


# ---------------------------------------------------------------------------------------------------------------------
# two engines of one process on one cache_dir
# ---------------------------------------------------------------------------------------------------------------------
def test_the_lock_waits_for_another_thread_of_this_process(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    first = _store.StoreLock(folder)
    first.acquire()
    got: list = []
    second = _store.StoreLock(folder)
    t = threading.Thread(target=lambda: got.append(second.acquire()))
    t.start()
    while _files.waiting(folder) == 0 and t.is_alive():
        t.join(0.01)
    assert t.is_alive() and got == []  # waiting, not refused
    first.release()
    t.join(30)
    assert got == [None] and second.file is not None
    second.release()


def test_the_same_thread_asking_twice_is_an_error_not_a_deadlock(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    lock = _store.StoreLock(folder)
    lock.acquire()
    try:
        with pytest.raises(ValueError, match=r"another engine of this same thread \(a nested call"):
            _store.StoreLock(folder).acquire()
    finally:
        lock.release()
    again = _store.StoreLock(folder)
    again.acquire()  # free again
    again.release()


def test_two_engines_of_one_process_on_one_cache_dir(tmp_path, monkeypatch):
    """The explorer's background fit and the user's own engine (another model object, the same weights: the model's
    lock does not serialise them): the second waits for the first, then reads its complete store (no second pass),
    and is never told that its own process is another one."""
    p = StoreProblem(tmp_path, n=N)
    started, go = threading.Event(), threading.Event()

    def slow(phase, done, total):
        if phase == "training factors" and done > 0:
            started.set()
            go.wait(60)

    background = p.engine(progress_callback=slow)
    folder = background._store_target()[0]
    errors: list[BaseException] = []

    def run(engine):
        try:
            engine.fit()
        except BaseException as e:  # reported below
            errors.append(e)

    t1 = threading.Thread(target=run, args=(background,))
    t1.start()
    assert started.wait(60)
    p.model = copy.deepcopy(p.model)
    user = p.engine()
    computed_by_user: list[int] = []
    real = TracInCPFast._factors_of

    def spy(self, batches, *a, **k):
        if self is user:
            computed_by_user.append(sum(b[0].shape[0] for b in batches))
        return real(self, batches, *a, **k)

    monkeypatch.setattr(TracInCPFast, "_factors_of", spy)
    t2 = threading.Thread(target=run, args=(user,))
    t2.start()
    while _files.waiting(folder) == 0 and t2.is_alive():
        t2.join(0.01)
    go.set()
    t1.join(60)
    t2.join(60)
    assert errors == [] and not t1.is_alive() and not t2.is_alive()
    assert computed_by_user == []  # it read the store the background engine completed
    assert torch.equal(user.self_influence(), background.self_influence())
    assert_scores_close(user.influence(p.test), p.engine(cache=False).influence(p.test))


# ---------------------------------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def set_umask():
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_write_gives_new_files_the_umask_mode(tmp_path, set_umask, mask):
    set_umask(mask)
    assert umask() == mask
    path = tmp_path / "flags.json"
    atomic_write(path, lambda f: f.write(b"{}"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path, set_umask):
    set_umask(0o077)
    path = tmp_path / "snapshot.html"
    path.write_bytes(b"old")
    path.chmod(0o644)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o644


def test_the_store_manifest_follows_the_umask(tmp_path, set_umask):
    set_umask(0o022)
    p = StoreProblem(tmp_path, n=300)
    p.engine().fit()
    for name in ("manifest.json", "A-0.bin", "sums.bin"):
        assert (p.store() / name).stat().st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints and cache_dir names
# ---------------------------------------------------------------------------------------------------------------------
def _load(net: nn.Module, path: str) -> float:
    net.load_state_dict(torch.load(path, weights_only=True))
    return 1.0


def _fast(p: StoreProblem, paths: list[str]) -> TracInCPFast:
    return TracInCPFast(
        p.model,
        "2",
        TensorDataset(p.x, p.y),
        paths,
        checkpoints_load_func=_load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=100,
    )


def test_a_checkpoint_named_twice_warns_and_counts_twice(tmp_path):
    p = StoreProblem(tmp_path, n=300)
    a, b, _ = p.paths
    with pytest.warns(TracInWarning, match=rf"names the same file more than once \('{a}' = '{a}'\): each listing"):
        twice = _fast(p, [a, a, b])
    assert any("names the same file more than once" in n for n in twice.notes)  # also listed by the explorer
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)
        once, alone = _fast(p, [a, b]), _fast(p, [a])
    torch.testing.assert_close(twice.self_influence(), once.self_influence() + alone.self_influence())


def test_a_checkpoint_named_again_through_a_link_warns(tmp_path):
    p = StoreProblem(tmp_path, n=300)
    a, b, _ = p.paths
    link = tmp_path / "latest.pt"
    link.symlink_to(a)
    with pytest.warns(TracInWarning, match=rf"\('{a}' = '{link}'\)"):
        resolve_checkpoints([a, str(link), b])
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for x in (a, b):
        shutil.copy(x, folder)
    (folder / "ckpt-9.pt").symlink_to(folder / Path(a).name)
    with pytest.warns(TracInWarning, match=r"ckpt-0\.pt' = '.*ckpt-9\.pt'"):
        resolve_checkpoints(folder)
    messages: list[str] = []
    assert len(resolve_checkpoints([a, a], warn=messages.append)) == 2 and len(messages) == 1


def test_a_folder_in_the_checkpoint_list_is_a_clear_error(tmp_path):
    p = StoreProblem(tmp_path, n=300)
    sub = tmp_path / "epoch-3"
    sub.mkdir()
    with pytest.raises(ValueError, match=r"'.*epoch-3' is a folder, not a checkpoint file; pass the folder itself"):
        resolve_checkpoints([p.paths[0], sub])


def test_a_cache_dir_name_the_filesystem_cannot_hold_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"cache_dir '.*': the folder name 'x+'\.\.\. is 300 bytes, longer than"):
        check_cache_dir_name(tmp_path / ("x" * 300) / "cache")
    deep = tmp_path.joinpath(*(["d" * 200] * 21))
    with pytest.raises(ValueError, match=r"cache_dir .* bytes long: .* passes its filesystem's limit \(4096, PATH"):
        check_cache_dir_name(deep)
    check_cache_dir_name(tmp_path / "tracin-cache")  # a usual one
    long = tmp_path / ("x" * 300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)  # before any unwritable-cache warning
        with pytest.raises(ValueError, match=r"cache_dir '.*': the folder name 'x+'\.\.\. is 300 bytes"):
            q = StoreProblem(tmp_path, n=50)
            TracInCPFast(q.model, "2", TensorDataset(q.x, q.y), q.paths, checkpoints_load_func=_load, cache_dir=long)


# ---------------------------------------------------------------------------------------------------------------------
# test batches that cannot be computed on: clear errors before any pass
# ---------------------------------------------------------------------------------------------------------------------
def test_a_test_batch_on_the_meta_device_is_a_clear_error(tmp_path):
    p = StoreProblem(tmp_path, n=50)
    meta = (p.test[0].to("meta"), p.test[1].to("meta"))
    with pytest.raises(ValueError, match=r"inputs is on the 'meta' device, which holds shapes but no values"):
        p.engine(cache=False).influence(meta, k=2)


def test_a_single_test_row_without_its_batch_dimension_is_a_clear_error(tmp_path):
    p = StoreProblem(tmp_path, n=50)
    eng = p.engine(cache=False)
    for labels in (p.test[1][0], p.test[1][:1]):
        with pytest.raises(
            ValueError,
            match=r"single example without its batch dimension: features of shape \(8,\), where the model takes "
            r"batches of shape \(n, 8\)\. Fix: .*x\.unsqueeze\(0\)",
        ):
            eng.influence((p.test[0][0], labels), k=2)
    assert eng.influence((p.test[0][:1], p.test[1][:1]), k=2).indices.shape == (1, 2)  # one row, batched


# ---------------------------------------------------------------------------------------------------------------------
# training data the cache cannot recognise
# ---------------------------------------------------------------------------------------------------------------------
class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


class _Opaque(torch.utils.data.Dataset):
    """A map-style dataset without arrays: recognised by its type, length and a sample of its items."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _on(p: StoreProblem, data, **kw) -> TracInCPFast:
    kw.setdefault("cache_dir", p.cache)
    return TracInCPFast(
        p.model,
        "2",
        data,
        p.paths,
        checkpoints_load_func=p.load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=100,
        **kw,
    )


def test_an_iterable_dataset_without_data_version_writes_no_store(tmp_path):
    p = StoreProblem(tmp_path, n=300)
    expected = p.engine(cache=False).influence(p.test)
    for kw in ({}, {"max_memory": 10 << 20}):
        with pytest.warns(
            TracInWarning,
            match=r"_Stream without a length, .* nothing is written to cache_dir: .*"
            r"computed in memory instead\. Pass data_version=",
        ):
            eng = _on(p, _Stream(p.x, p.y), **kw)
        torch.testing.assert_close(eng.influence(p.test), expected)
        assert not p.cache.exists() or not any(p.cache.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)
        torch.testing.assert_close(_on(p, _Stream(p.x, p.y), data_version="v1").influence(p.test), expected)
    assert p.store().is_dir()  # with data_version: stored, for the next run


def test_an_opaque_dataset_reused_from_the_store_warns_unless_data_version_names_it(tmp_path):
    p = StoreProblem(tmp_path, n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)
        first = _on(p, _Opaque(p.x, p.y)).influence(p.test)  # computed: nothing reused
    with pytest.warns(
        TracInWarning,
        match=r"reused from cache_dir: train_dataset \(a _Opaque\) is recognised by its "
        r"type, length and 24 of its items only.*Pass data_version=",
    ):
        eng = _on(p, _Opaque(p.x, p.y))
        torch.testing.assert_close(eng.influence(p.test), first)
    assert any("24 of its items" in n for n in eng.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TracInWarning)
        _on(p, _Opaque(p.x, p.y), data_version="v1").fit()
        _on(p, _Opaque(p.x, p.y), data_version="v1").fit()  # reused, named by its version
        _on(p, p.train).fit()
        _on(p, p.train).fit()  # a TensorDataset: hashed in full
