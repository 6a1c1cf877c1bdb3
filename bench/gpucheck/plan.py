"""What one run does: the GPU run, or the same pipeline at a tiny size on the CPU (``--dry-run``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.faultlib.procs import TinyModel


@dataclass(frozen=True)
class Plan:
    """What one run does: the GPU run, or the same pipeline at a tiny size on the CPU."""

    device: str  # cuda | cpu
    model: TinyModel
    swarm_seconds: float
    inner_steps: int  # diloco: local steps between outer rounds
    precision: str
    compile: bool
    gpu_step_args: list[str] = field(default_factory=list)
    gpu_step_timeout: float = 300.0
    offload_args: list[str] = field(default_factory=list)  # bench/offload_copies.py
    offload_timeout: float = 120.0
    cuda_tests_timeout: float = 150.0  # the CUDA-only tests under pytest (children.CUDA_TESTS)


GPU_PLAN = Plan(
    device="cuda",
    # configs/demo.yaml's model (768 x 6, 24 heads, FFN 3072, generator 1/4) at seq 128 and micro-batch 64
    model=TinyModel(
        hidden_size=768, num_layers=6, num_heads=24, ffn_size=3072, seq_len=128, batch_size=64, target_batch_size=128
    ),
    swarm_seconds=180.0,
    inner_steps=100,
    precision="bf16",
    compile=True,
    gpu_step_args=["--device", "cuda", "--no-cpu"],  # the CPU row is measured on the dev machine (bench/README)
    offload_args=["--device", "cuda", "--size", "demo", "--steps", "5", "--batch", "32", "--seq", "128"],
)
DRY_PLAN = Plan(
    device="cpu",
    model=TinyModel(target_batch_size=8),  # 32 wide, 2 layers, seq 32, micro-batch 4
    swarm_seconds=10.0,
    inner_steps=5,
    precision="auto",  # fp32 on CPU
    compile=False,  # inductor's C++ build would take the dry run's whole minute
    gpu_step_args=["--cpu-only", "--cpu-steps", "2", "--cpu-warmup", "1"],
    gpu_step_timeout=120.0,
    offload_args=["--device", "cpu", "--size", "tiny", "--steps", "3", "--batch", "4", "--seq", "32"],
)


def peer_flags(plan: Plan) -> list[str]:
    """This peer's device, precision, compile and micro-batch. Through ``--set`` on the run config today; switch to
    ``--device cuda --precision bf16 --compile --batch_size auto`` once ``peer join`` has them (issue 22)."""
    return [
        "--set", f"train.device={plan.device}",
        "--set", f"train.precision={plan.precision}",
        "--set", f"train.compile={str(plan.compile).lower()}",
        "--set", f"train.batch_size={plan.model.batch_size}",
    ]  # fmt: skip
