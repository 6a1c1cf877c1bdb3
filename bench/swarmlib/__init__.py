"""The pieces of ``bench/swarm.py``: the emulated network (``netem``: namespaces on a bridge, links shaped by tbf),
each peer's CPU budget (``cpu``: cgroup quotas and their usage), the phases the orchestrator runs (``phases``), the
peer that runs inside a namespace (``worker``) and the table (``report``). Imports nothing heavy: ``swarm.py --help``
starts without torch or hivemind."""
