"""Readers for the deployment recipes under ``deploy/`` and the real things they must agree with.

Why these exist: no Docker engine or cluster runs in CI, so the recipes are checked against what they name instead —
command lines are parsed by the real argparse parsers of ``python -m coordinator`` / ``python -m peer``, PromQL
queries are matched against the metric families ``coordinator.metrics`` really exports, and the files are read with
the same rules their tools use (YAML, systemd unit syntax, Dockerfile instructions).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.metrics import CoordinatorMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# The metric families the contract between the parts promises (the dashboard must show each of them).
CONTRACT_METRICS = (
    "warmswarm_alive_peers",
    "warmswarm_global_step",
    "warmswarm_samples",
    "warmswarm_samples_per_second",
    "warmswarm_loss",
    "warmswarm_checkpoints",
    "warmswarm_checkpoint_save_seconds",
    "warmswarm_last_checkpoint_step",
    "warmswarm_rejected_records",
    "warmswarm_download_bytes",
)


# ----------------------------------------------------------------------------------------------------------- CLIs


def cli_parser(module_name: str) -> argparse.ArgumentParser:
    """The top-level parser of ``python -m <module_name>``: its ``__main__.build_parser()`` (both CLIs have one)."""
    module = importlib.import_module(f"{module_name}.__main__")
    return module.build_parser()


class CommandError(AssertionError):
    """A command line that the real parser refuses; the message is argparse's own."""


def parse_command(parsers: dict[str, argparse.ArgumentParser], argv: list[str]) -> argparse.Namespace:
    """Parses ``[module, *args]`` (what follows ``python -m``) with the real parser of that module.

    Raises CommandError with argparse's message for an unknown module, subcommand or flag, a bad value, or a
    missing required argument; also when the line names no subcommand that would run.
    """
    if not argv or argv[0] not in parsers:
        raise CommandError(f"{argv[:1]} is not one of the modules {sorted(parsers)}")
    module, args = argv[0], argv[1:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            namespace = parsers[module].parse_args(args)
    except SystemExit as e:
        raise CommandError(f"python -m {module} {shlex.join(args)}: {err.getvalue().strip()} (exit {e.code})") from None
    if not callable(getattr(namespace, "func", None)):
        raise CommandError(f"python -m {module} {shlex.join(args)}: names no subcommand that runs")
    return namespace


def after_python_m(argv: list[str]) -> list[str]:
    """``[..., python, -m, module, args...]`` -> ``[module, args...]``."""
    if "-m" not in argv or not Path(argv[max(argv.index("-m") - 1, 0)]).name.startswith("python"):
        raise CommandError(f"{shlex.join(argv)} does not run `python -m <module>`")
    return argv[argv.index("-m") + 1 :]


# ------------------------------------------------------------------------------------------------- Prometheus


@dataclass(frozen=True)
class ExportedMetric:
    family: str  # e.g. warmswarm_samples
    type: str  # counter | gauge | histogram | ...
    labels: frozenset[str]
    series: frozenset[str]  # the series names a query may use: warmswarm_samples_total, ..._bucket, ...


_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


@contextlib.contextmanager
def coordinator_metrics(tmp_dir: Path) -> Iterator[CoordinatorMetrics]:
    """A real ``CoordinatorMetrics`` over a real store holding one run with progress, a checkpoint and its
    evaluation, an export built and one failed, a rejected record and a download, so that every family (labelled
    ones included) has samples to show."""
    from coordinator.metrics import CoordinatorMetrics
    from coordinator.store import CheckpointRow, EvaluationScore, Store

    store = Store(tmp_dir / "metrics-store.sqlite")
    try:
        store.open_run("deploy-check", {})
        store.record_progress(global_step=120, alive_peers=2, samples_per_second=50.0, loss=3.25)
        store.record_checkpoint(CheckpointRow(name="ckpt-000120", step=120, created=time.time(), save_seconds=1.5))
        store.add_rejected({"bad_signature": 1})
        score = EvaluationScore("ckpt-000120", 120, "checkpoint", "lee", "spearman", 0.63, 0.004, [0, 1], [0.63, 0.63])
        store.record_evaluation("ckpt-000120", 120, [score], seconds=100.0)
        store.count_export_builds(["bf16"], ["int8"])
        metrics = CoordinatorMetrics(store)
        metrics.add_download_bytes("http", 1)
        yield metrics
    finally:
        store.close()


def exported_metrics(metrics: CoordinatorMetrics) -> dict[str, ExportedMetric]:
    """Every metric family the registry exports, with its label names and the series names queries may use."""
    metrics.render()
    found = {}
    for family in metrics.registry.collect():
        labels = frozenset(k for s in family.samples for k in s.labels if k not in ("le", "quantile"))
        series = frozenset(family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",)))
        found[family.name] = ExportedMetric(family.name, family.type, labels, series)
    return found


_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_NUMBER = re.compile(r"(?<![a-zA-Z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Grafana's interval variables, replaced by a duration so that the query is plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr


@dataclass
class PromQLNames:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)  # in matchers and by/without/on/ignoring/group_* clauses


def promql_names(expr: str) -> PromQLNames:
    """The metric and label names a PromQL expression refers to (function names, keywords, numbers left out)."""
    names = PromQLNames()
    text = _STRING.sub('""', expr)
    for match in _GROUPING.finditer(text):
        names.labels.update(n.strip() for n in match.group(1).split(",") if n.strip())
    text = _GROUPING.sub(" ", text)
    for match in _MATCHERS.finditer(text):
        names.labels.update(_MATCHER_LABEL.findall(match.group(1)))
    text = _RANGE.sub(" ", _MATCHERS.sub(" ", text))
    text = _NUMBER.sub(" ", text)
    for match in _IDENT.finditer(text):
        word = match.group(0)
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and word.lower() not in _PROMQL_KEYWORDS:
            names.metrics.add(word)
    return names


def dashboard_targets(dashboard: dict) -> list[tuple[str, dict]]:
    """``(panel title, target)`` for every query target, nested rows included."""
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel.get("title", "?"), target))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return found


# ---------------------------------------------------------------------------------------------------- systemd


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as ``{section: {key: [values in order]}}`` (keys may repeat, like Environment=).

    systemd's syntax rather than configparser's: repeated keys accumulate, ``#``/``;`` start comments only at the
    start of a line, and a trailing backslash continues a line.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path.name}:{number}: not a `Key=value` line inside a section: {raw!r}")
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env = {}
    for assignment in unit.get("Service", {}).get("Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def expand_exec(command: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: ``${VAR}`` stays one word, a lone ``$VAR`` splits into words (empty: none)."""
    words = []
    for word in shlex.split(command):
        lone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if lone:
            words.extend(env.get(lone.group(1), "").split())
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return words


# ------------------------------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to
    keyword: str
    value: str


def read_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, value.strip()))
    return instructions


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """The environment the final stage's ``ENV`` lines set (``KEY=value`` forms; ``$VAR`` left as written)."""
    last = max(i.stage for i in instructions)
    env = {}
    for instruction in instructions:
        if instruction.stage == last and instruction.keyword == "ENV":
            for item in shlex.split(instruction.value):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exec_form(value: str) -> list[str] | None:
    """The JSON array of an exec-form ENTRYPOINT/CMD, or None for the shell form."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed) else None


def copy_sources(instruction: Instruction) -> list[str]:
    """Build-context sources of a COPY/ADD (empty for ``--from=`` copies, which read another stage)."""
    words = shlex.split(instruction.value)
    if any(w.startswith("--from") for w in words):
        return []
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


def dockerignore_patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _dockerignore_regex(pattern: str) -> re.Pattern:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def ignored_by(patterns: list[str], relative: str) -> bool:
    """Whether a build-context path is excluded: Docker's rule that a pattern matching the path or any of its parent
    directories excludes it, ``**`` spanning directories, and a later ``!pattern`` including it again."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


# ------------------------------------------------------------------------------------------------------ sizes

_K8S_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_COMPOSE_SUFFIXES = {"b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def k8s_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (``8Gi``, ``512M``, ``1000``) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(quantity))
    if not match or match.group(2) not in (*_K8S_SUFFIXES, ""):
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(match.group(1)) * _K8S_SUFFIXES.get(match.group(2), 1))


def compose_bytes(size: str | int) -> int:
    """A Compose byte value (``shm_size: 6gb``, ``64m``, a plain number of bytes) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", str(size).lower())
    if not match or match.group(2) not in (*_COMPOSE_SUFFIXES, ""):
        raise ValueError(f"not a byte value: {size!r}")
    return int(float(match.group(1)) * _COMPOSE_SUFFIXES.get(match.group(2), 1))
