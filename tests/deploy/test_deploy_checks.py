"""The readers in deploy_checks must catch what they are there to catch, or the recipe tests prove nothing."""

from __future__ import annotations

import argparse

import pytest
from deploy_checks import (
    CommandError,
    Instruction,
    copy_sources,
    expand_exec,
    grafana_to_promql,
    ignored_by,
    parse_command,
    promql_names,
    read_dockerfile,
    read_unit,
)


def test_promql_names_keeps_metrics_and_drops_functions_keywords_labels_and_numbers():
    names = promql_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_seconds_bucket{job="x", reason=~"b.*"}[5m] offset 1h)))'
        " / on (instance) group_left (zone) b_total > bool 2e3 or c unless d:recorded"
    )
    assert names.metrics == {"a_seconds_bucket", "b_total", "c", "d:recorded"}
    assert names.labels == {"le", "job", "reason", "instance", "zone"}


def test_promql_names_ignores_strings_and_subqueries():
    names = promql_names('label_replace(max_over_time(up_total[1h:5m]), "dst", "rate(x)", "src", "(.*)")')
    assert names.metrics == {"up_total"}


def test_grafana_variables_become_durations_and_unknown_ones_fail():
    assert grafana_to_promql("rate(x_total[$__rate_interval])") == "rate(x_total[1m])"
    with pytest.raises(ValueError, match=r"\$instance"):
        grafana_to_promql('x{instance="$instance"}')


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers()
    start = sub.add_parser("start")
    start.add_argument("--port", type=int, required=True)
    start.set_defaults(func=lambda args: 0)
    return {"tool": parser}


def test_parse_command_accepts_a_good_line_and_reports_argparse_errors():
    assert parse_command(_parsers(), ["tool", "start", "--port", "8080"]).port == 8080
    with pytest.raises(CommandError, match="unrecognized arguments: --prot"):
        parse_command(_parsers(), ["tool", "start", "--port", "1", "--prot", "2"])
    with pytest.raises(CommandError, match="invalid int value"):
        parse_command(_parsers(), ["tool", "start", "--port", "http"])
    with pytest.raises(CommandError, match="required"):
        parse_command(_parsers(), ["tool", "start"])
    with pytest.raises(CommandError, match="no subcommand"):
        parse_command(_parsers(), ["tool"])
    with pytest.raises(CommandError, match="not one of the modules"):
        parse_command(_parsers(), ["other", "start"])


def test_unit_reader_keeps_repeated_keys_and_joins_continuations(tmp_path):
    path = tmp_path / "x.service"
    path.write_text("# c\n[Service]\nEnvironment=A=1\nEnvironment=B=2\nExecStart=/bin/x \\\n  --flag y\n")
    unit = read_unit(path)
    assert unit["Service"]["Environment"] == ["A=1", "B=2"]
    assert unit["Service"]["ExecStart"] == ["/bin/x  --flag y"]
    path.write_text("Key=outside\n")
    with pytest.raises(ValueError, match="inside a section"):
        read_unit(path)


def test_exec_expansion_follows_systemd_word_rules():
    env = {"URL": "http://h:1", "EXTRA": "--a --b", "EMPTY": ""}
    assert expand_exec("x --u ${URL} $EXTRA $EMPTY ${EMPTY}", env) == ["x", "--u", "http://h:1", "--a", "--b", ""]


def test_dockerfile_reader_tracks_stages_and_copy_sources(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text("FROM a AS b\n# note\nCOPY --chown=1:1 x/ y \\\n  z/\nFROM c\nCOPY --from=b /o /o\n")
    steps = read_dockerfile(path)
    assert [(i.stage, i.keyword) for i in steps] == [(0, "FROM"), (0, "COPY"), (1, "FROM"), (1, "COPY")]
    assert copy_sources(steps[1]) == ["x/", "y"]
    assert copy_sources(Instruction(1, "COPY", "--from=b /o /o")) == []


def test_dockerignore_matching():
    patterns = ["**/.venv", "**/*.pyc", "runs", "docs/*.png", "!docs/keep.png"]
    assert ignored_by(patterns, ".venv/bin/python")
    assert ignored_by(patterns, "peer/.venv")
    assert ignored_by(patterns, "peer/cli/x.pyc")
    assert ignored_by(patterns, "runs/demo/state.db")
    assert ignored_by(patterns, "docs/a.png")
    assert not ignored_by(patterns, "docs/keep.png")
    assert not ignored_by(patterns, "peer/cli/join.py")
    assert not ignored_by(patterns, "runsheet.txt")
