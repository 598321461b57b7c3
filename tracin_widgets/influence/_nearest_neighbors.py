"""Nearest-neighbour indices for TracInCPFastRandProj (maximum inner product search)."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class NearestNeighbors(ABC):
    """Captum-compatible interface: ``setup(data)`` once, then ``get_nearest_neighbors(query, k)``.

    ``get_nearest_neighbors`` returns ``(indices, scores)``, both ``(n_query, k)``, where the score is the dot
    product with the query and rows are sorted by decreasing score.
    """

    @abstractmethod
    def setup(self, data: torch.Tensor) -> None: ...

    @abstractmethod
    def get_nearest_neighbors(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


_STORE_INDEX = re.compile(r"^annoy-(?P<tag>[0-9a-f]+)-t\d+\.ann$")


def _tag_of(path: Path, tag: str | None) -> str | None:
    m = _STORE_INDEX.match(path.name)
    return tag if tag is not None else (m["tag"] if m else None)


def _digest(path: Path) -> str:
    """The checksum of the file ``path`` (``influence/_checksum.py``), never read through a link."""
    from ._files import open_file
    from ._integrity import file_digest

    fd = open_file(path, os.O_RDONLY)
    try:
        return file_digest(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _as_2d_float32(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(len(t), -1).to("cpu", torch.float32).contiguous().numpy()


class ExactNearestNeighbors(NearestNeighbors):
    """Exact brute-force maximum inner product search with torch (fast for tens of thousands of rows)."""

    def __init__(self) -> None:
        self.data: torch.Tensor | None = None

    def setup(self, data: torch.Tensor) -> None:
        self.data = data.detach().reshape(len(data), -1)

    def get_nearest_neighbors(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data is None:
            raise RuntimeError("ExactNearestNeighbors.setup(data) must be called before querying.")
        q = query.detach().reshape(len(query), -1).to(self.data.device, self.data.dtype)
        k = min(k, self.data.shape[0])
        vals, idx = torch.topk(q @ self.data.T, k, dim=1)
        return idx.to(torch.int64).cpu(), vals.cpu()


class AnnoyNearestNeighbors(NearestNeighbors):
    """Approximate search with Annoy's ``dot`` metric, as Captum's class of the same name.

    The index is filled from one float32 array (Captum converts every element of every torch row on its
    own, which is what makes its set-up slow). ``search_k`` defaults to ``num_trees * max(k, 50)``,
    above Annoy's own default (``num_trees * k``), for better recall at little cost.

    On disk (``TracInCPFastRandProj`` with a ``cache_dir`` does this itself, in its factor store):
    ``build_on_disk(path, blocks, rows, dim)`` builds the index in the file ``path`` with Annoy's ``on_disk_build``
    from blocks of rows (they never need to be in memory together, nor the index: the file is memory-mapped), written
    under a temporary name and renamed when complete, with ``path + ".json"`` recording what it was built from (its
    file name and ``tag``, items, dimension, trees, size and a checksum of the file); ``load(path, n_items, dim)``
    verifies the file against that record (every byte: a damaged index is never memory-mapped, where it would
    crash the process) and memory-maps it (Annoy's ``load``: pages are read as queries touch them); it returns
    False, changing nothing, when the file is missing, incomplete, damaged, foreign (another ``tag``, or a record
    of another file), a link, or was built with another ``num_trees``, item count or dimension. The ``tag`` is the
    one given, else the ``<tag>`` of a file named ``annoy-<tag>-t<trees>.ann`` (the factor store's).
    """

    def __init__(self, num_trees: int = 10, search_k: int | None = None) -> None:
        if importlib.util.find_spec("annoy") is None:  # pragma: no cover - annoy is a dependency
            raise ImportError("AnnoyNearestNeighbors needs the `annoy` package: pip install annoy")
        if isinstance(num_trees, bool) or not isinstance(num_trees, int) or num_trees <= 0:
            raise ValueError(f"num_trees must be a positive int, got {num_trees!r}.")
        self.num_trees = num_trees
        self.search_k = search_k
        self.index: Any = None  # an annoy.AnnoyIndex once set up
        self._n = 0

    def setup(self, data: torch.Tensor) -> None:
        from annoy import AnnoyIndex

        arr = _as_2d_float32(data)
        self._n, dim = arr.shape
        index = AnnoyIndex(dim, "dot")
        for i in range(self._n):  # row by row: 2x faster than one tolist() of the whole array
            index.add_item(i, arr[i].tolist())
        index.build(self.num_trees, n_jobs=-1)
        self.index = index

    def build_on_disk(
        self,
        path: str | os.PathLike,
        blocks: Iterable[torch.Tensor],
        rows: int,
        dim: int,
        *,
        tag: str | None = None,
    ) -> None:
        """Build the index of ``rows`` items of ``dim`` values in the file ``path`` (replacing it) from ``blocks``
        (``(n, dim)`` each; row i of their concatenation is item i) with Annoy's ``on_disk_build``, then
        memory-map it. ``tag``: what the items were computed from, recorded for ``load`` (default: see the class).

        Raises OSError when the folder lacks room for it (checked first: Annoy writes through a memory map,
        where a full disk would kill the process) or cannot be written; ValueError when the blocks do not hold
        ``rows`` rows.
        """
        from annoy import AnnoyIndex

        from .._io import atomic_write
        from ._embeddings import fsync_path, remove_dead_temps, temp_path

        path = Path(path)
        remove_dead_temps(path.parent)
        self._check_room(path.parent, rows, dim)
        tmp = temp_path(path)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # Annoy opens the name itself: never through a link left there
        index = AnnoyIndex(dim, "dot")
        index.on_disk_build(str(tmp))
        try:
            n = 0
            for block in blocks:
                arr = _as_2d_float32(block)
                for i in range(arr.shape[0]):
                    index.add_item(n + i, arr[i].tolist())
                n += arr.shape[0]
            if n != rows:
                raise ValueError(f"build_on_disk got {n} rows in its blocks, not rows={rows}.")
            index.build(self.num_trees, n_jobs=-1)
            fsync_path(tmp)
            digest = _digest(tmp)
            os.replace(tmp, path)
        except BaseException:
            index.unload()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        meta = {"format": 2, "metric": "dot", "items": n, "dim": dim, "trees": self.num_trees}
        meta.update(name=path.name, tag=_tag_of(path, tag), bytes=path.stat().st_size, digest=digest)
        text = json.dumps(meta).encode()
        atomic_write(_meta_path(path), lambda f: f.write(text))
        self.index, self._n = index, n

    @staticmethod
    def disk_bytes(rows: int, dim: int, num_trees: int) -> int:
        """About the size of an index of ``rows`` x ``dim`` with ``num_trees`` trees (Annoy's ``dot`` nodes take
        ``16 + 4 dim`` bytes; each tree adds about ``4 / (dim + 2)`` nodes per item), with Annoy's 30 % slack."""
        nodes = rows * (1 + num_trees * 4 / (dim + 2))
        return int(1.3 * (16 + 4 * dim) * nodes)

    def _check_room(self, folder: Path, rows: int, dim: int) -> None:
        need = self.disk_bytes(rows, dim, self.num_trees)
        free = shutil.disk_usage(folder).free
        if free < need:
            raise OSError(
                errno.ENOSPC,
                f"no room for the Annoy index in {str(folder)!r}: it needs about {need / 1e9:.3g} GB, "
                f"{free / 1e9:.3g} GB are free",
            )

    def load(
        self, path: str | os.PathLike, n_items: int | None = None, dim: int | None = None, *, tag: str | None = None
    ) -> bool:
        """Memory-map the index ``path`` written by ``build_on_disk``: True when loaded; False (nothing changed)
        when ``path`` or its ``.json`` record is missing, a link, or does not match the file (an interrupted,
        damaged or foreign build: its checksum is verified first), or the index has another ``tag`` (default: see
        the class) or ``num_trees``, or not ``n_items`` items or ``dim`` values (when given)."""
        from annoy import AnnoyIndex

        from ._files import link_problem, read_text

        path = Path(path)
        try:
            if link_problem(path) is not None or link_problem(_meta_path(path)) is not None:
                return False
            meta = json.loads(read_text(_meta_path(path)))
            if not isinstance(meta, dict) or meta.get("format") != 2 or meta.get("metric") != "dot":
                return False
            if meta.get("name") != path.name or meta.get("tag") != _tag_of(path, tag):
                return False
            if meta.get("trees") != self.num_trees or (n_items is not None and meta.get("items") != n_items):
                return False
            if dim is not None and meta.get("dim") != dim:
                return False
            if path.stat().st_size != meta["bytes"] or _digest(path) != meta["digest"]:
                return False
            index = AnnoyIndex(int(meta["dim"]), "dot")
            index.load(str(path), prefault=False)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if index.get_n_items() != meta["items"] or index.get_n_trees() != self.num_trees:
            index.unload()
            return False
        self.index, self._n = index, int(meta["items"])
        return True

    def get_nearest_neighbors(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index is None:
            raise RuntimeError("AnnoyNearestNeighbors.setup(data) must be called before querying.")
        k = min(k, self._n)
        sk = self.search_k if self.search_k is not None else self.num_trees * max(k, 50)
        all_idx, all_val = [], []
        for row in _as_2d_float32(query).tolist():
            idx, dist = self.index.get_nns_by_vector(row, k, search_k=sk, include_distances=True)
            if len(idx) < k:  # too few candidates reached: widen the search once, then brute force
                idx, dist = self.index.get_nns_by_vector(row, k, search_k=max(sk * 16, self._n), include_distances=True)
            if len(idx) < k:
                vecs = np.asarray([self.index.get_item_vector(i) for i in range(self._n)], dtype=np.float32)
                s = vecs @ np.asarray(row, dtype=np.float32)
                order = np.argsort(-s, kind="stable")[:k]
                idx, dist = order.tolist(), s[order].tolist()
            all_idx.append(idx)
            all_val.append(dist)
        return torch.tensor(all_idx, dtype=torch.int64).reshape(-1, k), torch.tensor(all_val).reshape(-1, k)
