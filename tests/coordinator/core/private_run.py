"""A real private coordinator (allowlist + token authority) on loopback, with a stand-in checkpoint 0: what the
token and revocation tests start."""

from pathlib import Path

from peer.config import RunConfig


def write_fake_checkpoint(cfg: RunConfig, out: Path) -> None:
    (out / "config.json").write_text("{}")  # these tests never load the model


def start_private_coordinator(run_id: str, data_dir: Path, allowlist: Path, token_ttl: float):
    """``coordinator.service.start_coordinator`` on free loopback ports, no checkpoints pulled, a fast monitor."""
    from coordinator.deployment import CoordinatorSpec, EvaluationSettings, ExportSettings
    from coordinator.service import start_coordinator

    spec = CoordinatorSpec(
        data_dir=data_dir,
        host="127.0.0.1",
        http_port=0,
        grpc_port=0,
        dht_port=0,
        checkpoint_every=10**9,
        monitor_interval=0.5,
        allowlist=allowlist,
        token_ttl=token_ttl,
        evaluation=EvaluationSettings(enabled=False),  # the fake checkpoint 0 is no model to evaluate
        exports=ExportSettings(forms=()),  # nor to export
    )
    return start_coordinator(RunConfig(run_id=run_id), spec, initial_state=write_fake_checkpoint)
