"""Fault injection with real processes: process control (``procs``), the scenarios of ``bench/faults.py``
(``scenarios``), the soak (``soak``) and attacker peers (``attacks``). Shared by the benchmark and the fast tests."""
