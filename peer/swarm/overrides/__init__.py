"""Every subclass of a hivemind class that overrides hivemind's private methods, in one place.

Why one place: these depend on hivemind's internals (1.1.12, pinned in requirements/constraints.txt), so a hivemind
upgrade is checked here and nowhere else. Each module's docstring names the hivemind methods it replaces:

- ``allreduce``: ``GatedAllReduceRunner`` (the gate on every part, robust reduction);
- ``averagers``: the gradient and state averagers (the gate on joins and downloads, the guarded round, the served
  state, the delta rule's application under the optimizer lock, stuck rounds called off, the offloaded optimizer's
  host buffers pinned on CUDA);
- ``optimizer``: ``GuardedOptimizer`` (plugs the above in);
- ``progress``: ``ThrottledProgressTracker`` (rate-limited progress records, a clean event-loop shutdown);
- ``state_download``: ``StateDownloadClient`` (the coordinator's state download under hivemind's handler name).
"""
