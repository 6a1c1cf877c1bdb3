"""Every subclass of a hivemind class that overrides hivemind's private methods, in one place.

Why one place: these depend on hivemind's internals (1.1.12, pinned in requirements/constraints.txt), so a hivemind
upgrade is checked here and nowhere else. Each module's docstring names the hivemind methods it replaces:

- ``allreduce``: ``GatedAllReduceRunner`` (the gate on every part, robust reduction);
- ``guard``: ``GuardedAveragerMixin``, what both averagers share (the gate on joins, parts and downloads, the
  guarded round, robust reduction);
- ``gradient_averager``: ``GuardedGradientAverager`` (its averaged gradients pinned on CUDA);
- ``state_averager``: ``GuardedStateAverager`` (the served state, checked downloads, the delta rule's application
  under the optimizer lock, stuck rounds called off, the offloaded optimizer's host buffers pinned on CUDA, the
  split download);
- ``state_parts``: ``StatePartsDownload`` (a joiner's state in tensor ranges from every donor of the newest state
  and, when it holds that state, the coordinator's checkpoint; a cut range resumed at another donor; serves ranges
  of its own state);
- ``averagers``: ``AveragerKinds``, the averager classes a peer uses;
- ``optimizer``: ``GuardedOptimizer`` (plugs the above in);
- ``progress``: ``ThrottledProgressTracker`` (rate-limited progress records, a clean event-loop shutdown);
- ``dht_process``: ``TolerantDHT`` (the DHT process drops a request it cannot unpickle instead of ending);
- ``state_download``: ``StateDownloadClient`` (the coordinator's state download under hivemind's handler name).
"""
