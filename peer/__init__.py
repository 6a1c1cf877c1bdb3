"""warmswarm volunteer peer: model growth, pretraining objectives, data, and the hivemind training loop."""

__version__ = "0.1.0"
