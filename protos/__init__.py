"""The coordinator's gRPC API: ``.proto`` sources and the generated code (committed, checked by a test)."""
