"""The ``warmswarm.v1`` proto package."""
