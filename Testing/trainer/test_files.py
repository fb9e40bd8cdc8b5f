"""Atomic output folders: nothing partial is left, --force replaces only on success, normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from wsp_cirrhosis.errors import InputError
from wsp_cirrhosis.files import staged_output_dir, write_text_atomic


def test_staged_folder_appears_only_on_success_with_the_users_permissions(tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        with staged_output_dir(out, force=False) as stage:
            (stage / "a.txt").write_text("x")
            assert not out.exists()
    finally:
        os.umask(old)
    assert (out / "a.txt").read_text() == "x"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's owner-only 0700
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failure_leaves_the_old_folder_and_no_partial_one(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(InputError, match="--force"):
        with staged_output_dir(out, force=False):
            pass
    with pytest.raises(RuntimeError):
        with staged_output_dir(out, force=True) as stage:
            (stage / "new.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (out / "keep.txt").read_text() == "old" and not (out / "new.txt").exists()
    with staged_output_dir(out, force=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_atomic_file_gets_the_users_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
