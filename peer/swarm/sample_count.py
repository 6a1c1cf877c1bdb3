"""A volunteer's samples count that goes on across its sessions, kept next to its identity file.

Why: the coordinator credits a volunteer the increase of the ``samples_total`` its records carry. A count that starts
again at 0 in every process makes a restart look like a count that went down, which the coordinator can only guess
from the numbers: after a short session, the new session's first record may already count more than the old one's
last, and the old session's samples are then credited once less. Counting on from where the last session stopped
removes the guess. (A session id in the record would say it too, but hivemind's ``SchemaValidator`` rejects a record
whose parsed value differs from what was sent, so a new ``LocalMetrics`` field would make every older peer's record
invalid at an upgraded node, and the reverse.)

The file (``<identity_path>.samples.json``, ``{run_id: count}``) is rewritten atomically, and fsynced, before each
record that carries a new count is sent: the count a coordinator has seen is never ahead of the file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE_COUNT_SUFFIX = ".samples.json"


def sample_count_path(identity_path: str | os.PathLike) -> Path:
    path = Path(identity_path)
    return path.with_name(path.name + SAMPLE_COUNT_SUFFIX)


class SampleCount:
    """The count of ``run_id`` in ``path``: ``base`` is what earlier sessions counted; ``total(n)`` is the count to
    publish after ``n`` samples of this session, saved first. One process uses a file (the identity lock)."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id
        self._counts = self._read()
        self.base = self._counts.get(run_id, 0)
        self._saved = self.base

    def _read(self) -> dict[str, int]:
        try:
            counts = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable samples count %s (%s): counting from 0", self.path, e)
            return {}
        if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
            logger.warning("ignoring malformed samples count %s: counting from 0", self.path)
            return {}
        return counts

    def total(self, session_samples: int) -> int:
        total = self.base + session_samples
        if total != self._saved:
            self._counts[self.run_id] = total
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                json.dump(self._counts, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            self._saved = total
        return total
