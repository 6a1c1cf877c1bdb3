"""The coordinator_kill scenario's audit (``bench.faultlib.scenarios.audit_checkpoints``) runs while the coordinator
keeps saving and pruning: a save or prune between its reads of the API and the disk is no fault, while a half write
that a kill left, a corrupt or an unlisted checkpoint is. (A run counted a prune that landed between the two reads
as one "unlisted" checkpoint.)"""

from __future__ import annotations

import shutil

from bench.faultlib.scenarios import audit_checkpoints
from coordinator.checkpoints import CheckpointDir


def _save(ckpts: CheckpointDir, step: int) -> str:
    return ckpts.save(step, lambda d: (d / "weights.bin").write_bytes(bytes([step]) * 64), {"run_id": "r"}).name


def test_a_prune_or_a_save_between_the_audits_reads_is_no_fault(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep_last=10)
    names = [_save(ckpts, step) for step in (1, 2, 3)]
    reads = []

    def listed_while_the_coordinator_works() -> list[str]:
        """The API's list; after the first read the coordinator prunes ckpt-000001 and saves ckpt-000004."""
        reads.append(sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt-") and "." not in p.name))
        if len(reads) == 1:
            shutil.rmtree(tmp_path / names[0])
            _save(ckpts, 4)
        return reads[-1]

    live = tmp_path / "ckpt-000005.tmp"  # a save in progress
    live.mkdir()
    assert audit_checkpoints(tmp_path, listed_while_the_coordinator_works, killed={"ckpt-000003.tmp"}) == ([], [], [])
    assert reads == [names, [*names[1:], "ckpt-000004"]]  # the two reads did differ


def test_half_writes_corrupt_and_unlisted_checkpoints_are_counted(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep_last=10)
    names = [_save(ckpts, step) for step in (1, 2, 3)]
    (tmp_path / "ckpt-000004.tmp").mkdir()  # the write a kill interrupted, still there
    (tmp_path / "ckpt-000000.corrupt").mkdir()
    (tmp_path / names[1] / "weights.bin").write_bytes(b"tampered")
    left, bad, mismatch = audit_checkpoints(tmp_path, lambda: names[:2], killed={"ckpt-000004.tmp"})
    assert left == ["ckpt-000000.corrupt", "ckpt-000004.tmp"]
    assert len(bad) == 1 and names[1] in bad[0]
    assert mismatch == [names[2]]  # on disk, in neither read of the API
