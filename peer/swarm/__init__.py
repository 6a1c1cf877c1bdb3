"""The swarm layer of a peer: everything that runs while a peer is part of a run. One job per module:

- ``session`` — one volunteer's session: run config, DHT, starting state, training, leaving; ``training_inputs`` —
  the tokenizer, loss and batches it trains on; ``loop`` — the training loop (``good_state`` —
  its restore after non-finite parameters); ``shutdown`` — signals.
- ``dht`` — the DHT with an identity and the record validators; ``record_key`` — the key records are signed with;
  ``metrics`` — this peer's signed progress records and the run fingerprint; ``sample_count`` — samples across
  sessions.
- ``averaging`` — builds the peer's optimizer (``swarm_optimizer``: hivemind.Optimizer plus the outer step, background
  rounds and catch-up) for its averaging mode; ``modes/`` — one module per mode ("sync", "diloco"), each an
  ``AveragingMode``; ``outer`` — DiLoCo's outer Nesterov step; ``overlap`` — DiLoCo rounds in the background;
  ``codecs`` — wire compression (``blockwise4bit`` — 4-bit pseudo-gradients; ``feedback`` — their per-peer
  error feedback); ``robust`` — the robust reducer and the whole-round guard; ``round_evidence`` —
  what each round's reducer saw; ``bans`` — local bans and signed reports; ``gate`` — who may average with this
  peer.
- ``authorizers``, ``membership`` — a private run inside a peer (DHT authorizers, the membership gate).
- ``starting_state`` — where a peer's state comes from (peers, then the coordinator's checkpoint, then step 0);
  ``state`` — the download from peers (``donors`` — which donors and tensor ranges; ``checkpoint_source`` — the
  coordinator's checkpoint as one more source of it, over HTTP); ``state_check`` — checks a downloaded state.
- ``ddp``, ``follower`` — a multi-GPU peer (the group's collectives; a follower rank's session).
- ``overrides/`` — the hivemind subclasses that override hivemind's private methods, all in one place.
"""
