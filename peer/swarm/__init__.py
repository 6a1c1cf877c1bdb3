"""The swarm layer of a peer: DHT start, hivemind.Optimizer set-up, state download, metrics, the training loop.

Modules, one job each: ``dht`` (start the DHT with an identity and the record validators), ``records`` publishing
in ``metrics``, ``averaging`` (the hivemind.Optimizer for the "sync" and "diloco" modes), ``state`` (late joiners:
peers, then the coordinator's checkpoint, then step 0), ``shutdown`` (signals), ``loop`` (the training recipe).
"""
