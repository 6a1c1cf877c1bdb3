"""Fault injection with real processes: process control (``procs``), the scenarios of ``bench/faults.py``
(``scenarios``: the table; one module per family, ``peer_kill``, ``coordinator_kill``, ``all_leave``, ``hostile``;
what they share, ``harness``), the soak (``soak``) and attacker peers (``attacks``). Shared by the benchmark and the
fast tests."""
