"""Flag files: JSON/CSV round trips, atomic writes, loud errors for corrupt files (which are never overwritten)."""

from __future__ import annotations

import json

import pytest

from tracin_widgets.widget import _flags


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_write_read_round_trip(tmp_path, suffix):
    p = tmp_path / f"flags{suffix}"
    _flags.write(p, [3, 10, 42])
    assert _flags.read(p) == [3, 10, 42]
    assert [f.name for f in tmp_path.iterdir()] == [p.name]  # no temp file left behind


def test_file_formats_are_plain(tmp_path):
    # read back with independent readers: the json module and a line split
    _flags.write(tmp_path / "f.json", [1, 2])
    assert json.loads((tmp_path / "f.json").read_text()) == [1, 2]
    _flags.write(tmp_path / "f.csv", [1, 2])
    assert (tmp_path / "f.csv").read_text().splitlines() == ["index", "1", "2"]


def test_read_accepts_a_flagged_dict_and_extra_csv_columns(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"flagged": [5, 1, 5]}))
    assert _flags.read(tmp_path / "a.json") == [1, 5]
    (tmp_path / "b.csv").write_text("label,index\n3,7\n1,2\n")
    assert _flags.read(tmp_path / "b.csv") == [2, 7]


@pytest.mark.parametrize(
    "name,text,why",
    [
        ("c.json", "{not json", "Expecting property name"),
        ("d.json", '"text"', "expected a JSON list"),
        ("e.json", "[1, 2.5]", "integer training indices"),
        ("f.csv", "idx\n1\n", "'index' column"),
        ("g.csv", "index\nabc\n", "bad row"),
    ],
)
def test_corrupt_files_raise_a_clear_error_and_stay_untouched(tmp_path, name, text, why):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=rf"flags file .*{name}.* is corrupt .*{why}.*left untouched"):
        _flags.read(p)
    assert p.read_text() == text


def test_out_of_range_indices_are_rejected(tmp_path):
    p = tmp_path / "h.json"
    p.write_text("[0, 99]")
    with pytest.raises(ValueError, match=r"outside the training set \[0, 50\): \[99\]"):
        _flags.read(p, n_train=50)


def test_unsupported_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.json or \.csv"):
        _flags.write(tmp_path / "flags.txt", [1])


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "flags.json"
    _flags.write(p, [1])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(_flags.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _flags.write(p, [1, 2])
    assert _flags.read(p) == [1]
    assert [f.name for f in tmp_path.iterdir()] == ["flags.json"]


def test_write_goes_through_the_engines_atomic_write(tmp_path, monkeypatch):
    # one atomic-write helper (with fsync) for the whole package: the flags file is fsynced before the replace
    from tracin_widgets import _io as _cache

    calls: list[str] = []
    real_fsync, real_replace = _cache.os.fsync, _cache.os.replace
    monkeypatch.setattr(_cache.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(_cache.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    used: list[object] = []
    monkeypatch.setattr(_flags, "atomic_write", lambda p, w: (used.append(p), _cache.atomic_write(p, w))[1])
    p = _flags.write(tmp_path / "flags.csv", [2, 7])
    assert used == [p] and calls == ["fsync", "replace"]
    assert p.read_bytes() == b"index\n2\n7\n"
