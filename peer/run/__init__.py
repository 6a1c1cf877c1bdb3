"""What every process of a run agrees on, and starts no process: the checkpoint layout and its manifest, the client
that downloads a coordinator's checkpoints, and a private run's access contract (``tokens``, ``members``,
``revocations``: what the coordinator signs and publishes, and every peer checks).

Why a package of its own inside ``peer``: dependencies point one way, ``coordinator -> peer``. The coordinator
serves what this package describes and a peer (or ``coordinator download``) reads it, so both import it from here
and ``peer`` never imports ``coordinator`` (checked by import-linter, ``[tool.importlinter]`` in pyproject.toml).
The parts of a private run that run inside a peer (the DHT authorizers, the membership gate) are in ``peer.swarm``.
"""
