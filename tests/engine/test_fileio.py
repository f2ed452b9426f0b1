"""Whole-or-nothing writes: a failed write keeps the old file and leaves no temporary behind."""

from __future__ import annotations

import pytest

from engine.fileio import atomic_write_text, is_partial, replacing, temp_path


def test_a_write_replaces_the_file_and_leaves_only_it(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    atomic_write_text(path, "new\r\n")
    assert path.read_bytes() == b"new\r\n"  # newlines as given
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_an_os_error_names_the_file_the_user_asked_for(tmp_path):
    path = tmp_path / "missing-folder" / "out.json"
    with pytest.raises(FileNotFoundError) as err:
        atomic_write_text(path, "x")
    assert err.value.filename == str(path)


def test_unfinished_writes_are_recognised_by_name(tmp_path):
    assert is_partial(temp_path(tmp_path / "report.html").name)
    assert is_partial(".tmp-step_00000004")
    assert not is_partial("report.html") and not is_partial(".hidden")
