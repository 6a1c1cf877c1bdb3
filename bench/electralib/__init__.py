"""The pieces of ``bench/electra_vs_mlm.py``: the FLOPs convention both runs are held to (``flops``), the two
training runs (``training``), the probes on frozen features (``probes``) and the summary and plot (``report``). What
each measures and why: that script's docstring."""
