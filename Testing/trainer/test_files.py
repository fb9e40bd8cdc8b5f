"""Atomic output folders: nothing partial is left, --force replaces only on success, normal permissions."""

from __future__ import annotations

import os
import signal
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


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="os.kill(SIGTERM) ends the process on Windows")
@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_during_the_commit_neither_cuts_it_nor_cancels_a_finished_run(tmp_path, monkeypatch, caplog, existing):
    from wsp_cirrhosis.inference.predict import terminate_as_cancel

    out = tmp_path / "result"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("previous run")
    real_replace = os.replace
    sent = []

    def replace_then_terminate(src, dst):  # SIGTERM lands between the renames of the commit
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        real_replace(src, dst)

    with terminate_as_cancel() as check:
        with staged_output_dir(out, force=existing) as stage:
            (stage / "new.txt").write_text("this run")
            monkeypatch.setattr(os, "replace", replace_then_terminate)
        monkeypatch.setattr(os, "replace", real_replace)
        assert check() is False, "the signal was consumed by the commit, not kept for a later checkpoint"
    assert sent and (out / "new.txt").read_text() == "this run" and not (out / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"], "no staging or .old folder left"
    assert "SIGTERM arrived while" in caplog.text


def test_sigterm_before_the_commit_still_cancels_and_leaves_nothing(tmp_path):
    from wsp_cirrhosis.errors import Cancelled
    from wsp_cirrhosis.inference.predict import terminate_as_cancel

    out = tmp_path / "result"
    with pytest.raises(Cancelled), terminate_as_cancel():
        with staged_output_dir(out, force=False) as stage:
            (stage / "new.txt").write_text("this run")
            os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
