"""The peer's work dir: ``--work_dir``, else ``$XDG_CACHE_HOME/warmswarm/<run_id>``, else ``~/.cache/...``; one clear
line when it cannot be created."""

from __future__ import annotations

import os

import pytest

from peer.errors import UserError
from peer.run.work_dir import cache_home, peer_work_dir


def test_default_is_under_xdg_cache_home_when_it_is_set(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert peer_work_dir("run-a", None, env) == tmp_path / "xdg" / "warmswarm" / "run-a"


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"], ids=["unset", "empty", "relative"])
def test_default_is_under_home_without_a_usable_xdg_cache_home(tmp_path, xdg):
    env = {"HOME": str(tmp_path / "home")} | ({} if xdg is None else {"XDG_CACHE_HOME": xdg})
    assert cache_home(env) == tmp_path / "home" / ".cache"
    assert peer_work_dir("run-a", None, env) == tmp_path / "home" / ".cache" / "warmswarm" / "run-a"


def test_work_dir_flag_wins_over_the_environment(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert peer_work_dir("run-a", str(tmp_path / "given"), env) == tmp_path / "given"


def test_a_default_that_cannot_be_created_is_one_line_that_names_the_way_out(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file where the home directory should be")  # unwritable even for root
    with pytest.raises(UserError) as e:
        peer_work_dir("run-a", None, {"HOME": str(home)})
    message = str(e.value)
    assert "\n" not in message and str(home) in message
    assert "--work_dir" in message and "XDG_CACHE_HOME" in message


def test_an_unwritable_work_dir_flag_is_refused_with_its_name(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="--work_dir"):
        peer_work_dir("run-a", str(tmp_path / "file"), dict(os.environ))
