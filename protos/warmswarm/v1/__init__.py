"""Generated code for ``warmswarm.v1`` (do not edit: run ``python -m protos.generate``)."""
