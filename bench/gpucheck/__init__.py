"""The pieces of ``bench/gpu_check.py`` (GPU evidence in one call): what a run does (``plan``), the parts that run
as one child process each (``children``: gpu_step's table, the offloaded copies, the CUDA-only tests), the 2-peer
swarm (``swarm``), the samplers that watch it (``samplers``) and the JSON and summary (``report``). What each figure
is: that script's docstring."""
