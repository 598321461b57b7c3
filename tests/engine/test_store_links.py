"""The store never writes, truncates or reads a file through a symbolic link: a link where the lock, a factor file,
the store folder, an embeddings file or an index (or their temporary names) should be leaves what it points to
untouched, and the results are those of a store without it. The links are real symlinks to a user's files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tracin_widgets.influence import AnnoyNearestNeighbors, Cancelled, TracInCPFastRandProj, TracInWarning
from tracin_widgets.influence._embeddings import temp_path
from tracin_widgets.influence._files import StoreLock

from .oracle import assert_scores_close
from .problems import Problem as StoreProblem

N = 600
USER = bytes(range(256)) * 20  # a user's file: 5,120 bytes


def _user_file(tmp_path: Path, size: int | None = None) -> Path:
    path = tmp_path / "precious.dat"
    path.write_bytes(USER if size is None else (USER * (size // len(USER) + 1))[:size])
    return path


def _incomplete(p: StoreProblem) -> Path:
    """A store cancelled half way (its manifest records some blocks)."""

    def cancel(phase, done, total):
        if phase == "training factors" and done >= N // 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        p.engine(progress_callback=cancel).fit()
    return p.store()


def _link(at: Path, to: Path) -> None:
    if at.exists() or at.is_symlink():
        at.unlink()
    at.symlink_to(to)


def test_a_lock_that_is_a_link_is_never_written_through(tmp_path):
    p = StoreProblem(tmp_path, n=N)
    expected = p.engine(cache=False).influence(p.test)
    folder = _incomplete(p)
    user = _user_file(tmp_path)
    _link(folder / ".lock", user)
    with pytest.warns(TracInWarning, match=r"cannot be written .*lock file .* is a symbolic link: the store never"):
        got = p.engine().influence(p.test)
    assert user.read_bytes() == USER  # not truncated, no pid written into it
    assert_scores_close(got, expected)
    with pytest.raises(OSError, match=r"is a symbolic link"):
        StoreLock(folder).acquire()
    assert user.read_bytes() == USER


@pytest.mark.parametrize("name", ["A-0.bin", "G-2.bin", "norms.bin", "sums.bin", ".reserve"])
def test_a_store_file_that_is_a_link_is_never_resumed_through(tmp_path, name):
    p = StoreProblem(tmp_path, n=N)
    expected = p.engine(cache=False).influence(p.test)
    folder = _incomplete(p)
    user = _user_file(tmp_path, size=200_000)
    before = user.read_bytes()
    _link(folder / name, user)
    got = p.engine().influence(p.test)
    assert user.read_bytes() == before  # neither truncated nor overwritten with factors
    assert_scores_close(got, expected)
    assert not (folder / name).is_symlink()  # the link itself was replaced by the store's own file (or removed)


def test_a_complete_store_with_a_link_is_not_read_through_it(tmp_path):
    p = StoreProblem(tmp_path, n=N)
    expected = p.engine(cache=False).influence(p.test)
    p.engine().fit()
    folder = p.store()
    user = _user_file(tmp_path, size=(folder / "A-1.bin").stat().st_size)  # the right size, a user's bytes
    before = user.read_bytes()
    _link(folder / "A-1.bin", user)
    for kw in ({}, {"max_memory": 4000}):
        assert_scores_close(p.engine(**kw).influence(p.test), expected)  # recomputed, never the user's bytes
    assert user.read_bytes() == before and not (folder / "A-1.bin").is_symlink()


def test_a_store_folder_that_is_a_link_is_never_emptied(tmp_path):
    p = StoreProblem(tmp_path, n=N)
    expected = p.engine(cache=False).influence(p.test)
    folder = p.engine()._store_target()[0]
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_bytes(USER)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(mine, target_is_directory=True)
    with pytest.warns(TracInWarning, match=r"cannot be written .*store folder .* is a symbolic link"):
        got = p.engine().influence(p.test)
    assert_scores_close(got, expected)
    assert sorted(x.name for x in mine.iterdir()) == ["thesis.tex"] and (mine / "thesis.tex").read_bytes() == USER


def test_the_manifest_that_is_a_link_is_replaced_not_written_through(tmp_path):
    p = StoreProblem(tmp_path, n=N)
    expected = p.engine(cache=False).influence(p.test)
    folder = _incomplete(p)
    user = _user_file(tmp_path)
    (folder / "manifest.json").unlink()
    _link(folder / "manifest.json", user)
    assert_scores_close(p.engine().influence(p.test), expected)
    assert user.read_bytes() == USER and not (folder / "manifest.json").is_symlink()


def _randproj(p: StoreProblem, **kw):
    kw.setdefault("projection_dim", 16)
    return p.engine(TracInCPFastRandProj, **kw)


@pytest.mark.parametrize("which", ["E-*.bin", "E-*.sums", "E-*.json"])
def test_an_embeddings_file_that_is_a_link_is_not_used(tmp_path, which):
    p = StoreProblem(tmp_path, n=N)
    expected = _randproj(p, cache=False).influence(p.test, k=None)
    _randproj(p).fit()
    (path,) = p.store().glob(which)
    user = _user_file(tmp_path, size=path.stat().st_size)
    before = user.read_bytes()
    _link(path, user)
    got = _randproj(p, max_memory=4000).influence(p.test, k=None)  # streamed: read from the embeddings file
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # streamed vs in memory: summation order
    assert user.read_bytes() == before and not path.is_symlink()


def test_temporary_names_that_are_links_are_not_written_through(tmp_path):
    pytest.importorskip("annoy")
    p = StoreProblem(tmp_path, n=N)
    _randproj(p, nearest_neighbors=AnnoyNearestNeighbors(num_trees=3)).fit()
    folder = p.store()
    users = []
    for i, pattern in enumerate(("E-*.bin", "E-*.sums", "annoy-*.ann")):
        (path,) = folder.glob(pattern)
        path.unlink()  # rebuilt by the next instance, under this temporary name of this process
        users.append(tmp_path / f"user-{i}")
        users[-1].write_bytes(USER)
        _link(temp_path(path), users[-1])
    for j in folder.glob("E-*.json"):
        j.unlink()
    _randproj(p, nearest_neighbors=AnnoyNearestNeighbors(num_trees=3)).influence(p.test, k=3)
    assert all(u.read_bytes() == USER for u in users)
    assert len(list(folder.glob("E-*.bin"))) == 1 and len(list(folder.glob("annoy-*.ann"))) == 1


def test_an_index_that_is_a_link_is_not_loaded(tmp_path):
    pytest.importorskip("annoy")
    data = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    built = tmp_path / "built.ann"
    AnnoyNearestNeighbors(num_trees=3).build_on_disk(built, [data], rows=300, dim=8)
    link = tmp_path / "link.ann"
    link.symlink_to(built)
    (tmp_path / "link.ann.json").write_bytes((tmp_path / "built.ann.json").read_bytes().replace(b"built", b"link"))
    assert AnnoyNearestNeighbors(num_trees=3).load(built, 300, 8)
    assert not AnnoyNearestNeighbors(num_trees=3).load(link, 300, 8)
