"""What every process of a run agrees on, and starts no process:

- ``records`` — the DHT record schemas (metrics, ban reports, the ban list) and their keys.
- ``record_limits`` — the record-size validator every DHT node runs before any other.
- ``state_format`` — the swarm's resumable state by parameter name: the state download's wire order, the optimizer
  recipe that decodes it, ``optimizer.safetensors`` and the resume fields of ``training_state.json``.
- ``checkpoint_layout`` — the names both checkpoint layouts share (``ckpt-<step:06d>``, ``training_state.json``).
- ``checkpoint_manifest`` — a checkpoint's manifest (files, sizes, sha256), its one reader and the path checks both
  sides run.
- ``coordinator_client`` — the coordinator's JSON API as its readers see it, each answer checked.
- ``download`` — the client that downloads and verifies a coordinator's checkpoints.
- ``writable_dir`` — the one check of a directory a process is told to write into.
- ``work_dir`` — where a peer keeps its downloads and grown state: ``--work_dir``, else under ``$XDG_CACHE_HOME``.
- ``tokens``, ``members``, ``revocations`` — a private run's access contract: what the coordinator signs and
  publishes, and every peer checks (the parts that run inside a peer, the DHT authorizers and the membership gate,
  are in ``peer.swarm``).

Why a package of its own inside ``peer``: dependencies point one way, ``coordinator -> peer``. The coordinator
serves what this package describes and a peer (or ``coordinator download``) reads it, so both import it from here
and ``peer`` never imports ``coordinator`` (checked by import-linter, ``[tool.importlinter]`` in pyproject.toml).
Nothing here imports ``peer.swarm`` or ``peer.cli``: those start processes and sit above this package.
"""
