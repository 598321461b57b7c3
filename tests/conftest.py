"""Every test runs with its own user cache folder: the explorer's default review files never reach ~/.cache or
another test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_user_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
