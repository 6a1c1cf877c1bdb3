"""``bench/swarm.py --model electra``: the configurations (``--runs``: mode, codec, H), one row per configuration
and number of peers from its workers' results, the table, and the plot of held-out loss against bytes sent per peer
and against wall time.

Bytes are each peer's ``eth0`` tx counter over its training window (an overlapped round's tail included), as in the
MLP table. The fp32 reference is what an all-reduce of fp32 gradients every local step sends per peer, computed from
the parameter count: hivemind's all-reduce sends each peer's (n-1)/n share of the tensor out to be reduced and
the averaged part of it back out, 2 (n-1)/n x 4 bytes per parameter per step (the sync fp16 row measures the same
schedule at 2 bytes)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

MODES = ("sync", "diloco", "overlap")
CODECS = ("none", "fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit", "blockwise4bit")


@dataclass(frozen=True)
class Run:
    """One ``--runs`` entry, ``mode/codec[/H]``: ``sync/fp16``, ``diloco/fp16/100``, ``overlap/blockwise4bit/500``."""

    mode: str
    codec: str
    inner_steps: int

    @property
    def label(self) -> str:
        return f"{self.mode}/{self.codec}" + (f"/{self.inner_steps}" if self.mode != "sync" else "")


def parse_run(text: str, default_h: int = 500) -> Run:
    parts = text.split("/")
    if len(parts) not in (2, 3) or parts[0] not in MODES or parts[1] not in CODECS:
        raise ValueError(f"a run is mode/codec[/H] with mode in {MODES} and codec in {CODECS}: {text!r}")
    h = int(parts[2]) if len(parts) == 3 else default_h
    if h < 1:
        raise ValueError(f"H must be >= 1: {text!r}")
    if parts[1] == "blockwise4bit" and parts[0] != "overlap":
        raise ValueError(f"blockwise4bit needs overlapped rounds (overlap/blockwise4bit/H): {text!r}")
    return Run(parts[0], parts[1], h)


def worker_flags(run: Run, opts, model_dir: Path) -> list[str]:
    """The worker's flags for ``run`` on the ELECTRA bench (after the phase's common ones, so these win)."""
    return [
        "--model",
        "electra",
        "--model_dir",
        str(model_dir),
        "--codec",
        run.codec,
        "--inner_steps",
        str(run.inner_steps),
        "--local_steps",
        str(opts.local_steps),
        "--eval_at",
        *[str(k) for k in opts.eval_at],
        "--eval_batches",
        str(opts.eval_batches),
        "--seq_len",
        str(opts.seq_len),
        "--lr",
        str(opts.lr),
        "--electra_hidden",
        str(opts.electra_hidden),
        "--electra_layers",
        str(opts.electra_layers),
        "--electra_init",
        opts.electra_init,
    ]


def fp32_allreduce_bytes(parameters: int, peers: int) -> float:
    """Bytes one peer sends in one fp32 all-reduce of ``parameters`` gradients among ``peers``."""
    return 2 * (peers - 1) / peers * 4 * parameters


def mean_curve(results: list[dict]) -> list[dict]:
    """The peers' held-out curves averaged point by point (every peer evaluates at the same local steps; a peer
    stopped early by the time cap has fewer points, and the mean stops there)."""
    curves = [[p for p in r["curve"] if not p.get("final")] for r in results]
    length = min(len(c) for c in curves)
    out = []
    for k in range(length):
        pts = [c[k] for c in curves]
        out.append(
            {
                key: sum(p[key] for p in pts) / len(pts)
                for key in ("local_steps", "samples", "tx_bytes", "seconds", "loss", "mlm_loss", "disc_loss")
            }
        )
    return out


def electra_row(run: Run, n: int, cores: float, results: list[dict]) -> dict:
    samples = sum(r["samples"] for r in results)
    wall = [r["wall_seconds"] for r in results]
    parameters = results[0]["parameters"]
    steps = [r["local_steps"] for r in results]
    fp32 = fp32_allreduce_bytes(parameters, n) * sum(steps) / n if n > 1 else float("nan")
    bytes_per_peer = sum(r["tx_bytes"] for r in results) / n
    finals = [r["final"] for r in results]
    return dict(
        label=run.label,
        mode=run.mode,
        codec=run.codec,
        inner_steps=run.inner_steps if run.mode != "sync" else None,
        peers=n,
        parameters=parameters,
        cpu_per_peer=cores,
        cores_used=sum(r["cpu_seconds"] / r["wall_seconds"] for r in results),
        samples=samples,
        local_steps=steps,
        wall_seconds=sum(wall) / n,
        util=sum(r["compute_seconds"] for r in results) / sum(wall),
        # the in-loop held-out evaluations are the bench's, not the mode's: utilisation without them
        util_ex_eval=sum(r["compute_seconds"] for r in results)
        / sum(r["wall_seconds"] - r["eval_seconds"] for r in results),
        eval_seconds=sum(r["eval_seconds"] for r in results) / n,
        step_share=sum(r["step_seconds"] for r in results) / sum(wall),
        # the share of the window (without the evaluations) spent in the steps that ended in a global step: sync's
        # gradient all-reduce, a blocking DiLoCo round, or an overlapped round's start and landing (a wait for a
        # round still running included). The rest is the peer's own work: forward, backward, the inner AdamW step.
        round_share=sum(r["round_seconds"] for r in results)
        / sum(r["wall_seconds"] - r["eval_seconds"] for r in results),
        bytes_per_peer=bytes_per_peer,
        bytes_per_sample=sum(r["tx_bytes"] for r in results) / max(samples, 1),
        round_bytes_per_peer=sum(r["round_tx_bytes"] for r in results) / n if run.mode != "overlap" else None,
        fp32_allreduce_bytes_per_peer=fp32,
        vs_fp32_allreduce=fp32 / bytes_per_peer if bytes_per_peer > 0 else float("nan"),
        rounds=min(r["rounds"] for r in results),
        round_seconds=max(r["round_seconds"] / max(r["rounds"], 1) for r in results),
        global_steps=min(r["global_step"] for r in results),
        alone=(
            sum(r["gradient_steps_local"] for r in results) / max(sum(r["gradient_steps"] for r in results), 1)
            if run.mode == "sync"
            else None
        ),
        catch_ups=sum(r.get("catch_ups", 0) for r in results),
        rounds_averaged=[r.get("rounds_averaged") for r in results],
        final_loss=sum(f["loss"] for f in finals) / n,
        final_loss_per_peer=[f["loss"] for f in finals],
        final_mlm_loss=sum(f["mlm_loss"] for f in finals) / n,
        final_disc_loss=sum(f["disc_loss"] for f in finals) / n,
        initial_loss=results[0]["curve"][0]["loss"],
        curve=mean_curve(results),
        curves=[r["curve"] for r in results],
    )


def loss_at_samples(row: dict, samples: float) -> float | None:
    """``row``'s held-out loss (mean over peers) when its peers together had trained on ``samples``: linear between
    the held-out points around it (a point's samples are its local steps x batch x peers); None outside them.
    Why the swarm's samples and not a peer's: in sync the peers' local steps differ (a slower peer contributes fewer
    batches to each global step) while they hold one model."""
    pts = sorted(
        [(p["samples"] * row["peers"], p["loss"]) for p in row["curve"]] + [(row["samples"], row["final_loss"])]
    )
    for (s0, l0), (s1, l1) in zip(pts, pts[1:], strict=False):
        if s0 <= samples <= s1:
            return l0 if s1 == s0 else l0 + (l1 - l0) * (samples - s0) / (s1 - s0)
    return None


REFERENCE = "sync-reference"


def comparisons(rows: list[dict]) -> list[str]:
    """Per number of peers: every low-bandwidth row against sync fp16 at equal samples (the samples sync's peers
    trained on together in its window), and its bytes against fp32 all-reduce every step and against sync fp16.
    With a ``sync-reference`` row (``bench.swarmlib.sync_reference``: sync's trajectory without the network), also
    each row's held-out loss at the end of its window against sync's at the same samples, and the netns sync row
    against the reference at its samples (how far the network's sync strays from its trajectory)."""
    lines = []
    for n in sorted({r["peers"] for r in rows}):
        base = next((r for r in rows if r["peers"] == n and r["label"] == "sync/fp16"), None)
        ref = next((r for r in rows if r["peers"] == n and r["label"] == REFERENCE), None)
        if ref is not None and base is not None:
            theirs = loss_at_samples(ref, base["samples"])
            if theirs is not None:
                lines.append(
                    f"{n} peers, sync/fp16 on the network at its {base['samples']} samples: {base['final_loss']:.4f} "
                    f"vs the sync reference {theirs:.4f} ({base['final_loss'] / theirs - 1:+.2%})"
                )
        for row in (r for r in rows if r["peers"] == n and r["mode"] not in ("sync", "reference")):
            text = f"{n} peers, {row['label']}: {row['vs_fp32_allreduce']:.0f}x fewer bytes than fp32 all-reduce"
            if base is not None:
                per_sample = base["bytes_per_sample"] / max(row["bytes_per_sample"], 1e-9)
                text += f", {per_sample:.0f}x fewer bytes per sample than sync fp16"
                mine = loss_at_samples(row, base["samples"])
                if mine is not None:
                    text += (
                        f"; held-out loss at sync's {base['samples']} samples: {mine:.4f} vs sync "
                        f"{base['final_loss']:.4f} ({mine / base['final_loss'] - 1:+.2%})"
                    )
            if ref is not None:
                theirs = loss_at_samples(ref, row["samples"])
                if theirs is not None:
                    text += (
                        f"; at its {row['samples']} samples: {row['final_loss']:.4f} vs the sync reference "
                        f"{theirs:.4f} ({row['final_loss'] / theirs - 1:+.2%})"
                    )
            lines.append(text)
    return lines


def print_electra(rows: list[dict]) -> None:
    print(
        f"\n{'run':28} {'peers':>5} {'cores':>5} {'util':>6} {'util-ev':>7} {'steps/peer':>10} {'wall s':>7} "
        f"{'MB sent/peer':>12} {'B/sample':>9} {'vs fp32 AR':>10} {'rounds':>6} {'loss 0':>7} {'held-out loss':>13}"
    )
    for r in rows:
        if r["mode"] == "reference":
            print(f"{r['label']:28} {r['peers']:5d} {'(no network)':>22} {min(r['local_steps']):10d} "
                  f"{'':>51} {r['initial_loss']:7.3f} {r['final_loss']:13.4f}")  # fmt: skip
            continue
        print(
            f"{r['label']:28} {r['peers']:5d} {r['cores_used']:5.2f} {r['util']:6.1%} {r['util_ex_eval']:7.1%} "
            f"{min(r['local_steps']):10d} {r['wall_seconds']:7.1f} {r['bytes_per_peer'] / 1e6:12.2f} "
            f"{r['bytes_per_sample']:9.0f} {r['vs_fp32_allreduce']:9.0f}x {r['rounds']:6d} {r['initial_loss']:7.3f} "
            f"{r['final_loss']:13.4f}"
        )
    for line in comparisons(rows):
        print(line)


def plot(rows: list[dict], path: Path) -> bool:
    """Held-out loss against bytes sent per peer and against wall time, one line per configuration (solid: 2 peers,
    dashed: 4); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (by_bytes, by_time, by_samples) = plt.subplots(1, 3, figsize=(19, 5))
    labels = sorted({r["label"] for r in rows})
    colours = {label: f"C{k}" for k, label in enumerate(labels)}
    for r in rows:
        style = dict(color=colours[r["label"]], linestyle="-" if r["peers"] <= 2 else "--", marker="o", markersize=3)
        name = f"{r['label']} ({r['peers']} peers)"
        samples = [p["samples"] * r["peers"] for p in r["curve"]] + [r["samples"]]
        by_samples.plot(samples, [p["loss"] for p in r["curve"]] + [r["final_loss"]], label=name, **style)
        if r["mode"] == "reference":
            continue  # no network: no bytes, and its seconds are one process's
        pts = [*r["curve"]]
        if not pts or pts[-1]["local_steps"] != min(r["local_steps"]):
            pts.append(
                dict(tx_bytes=r["bytes_per_peer"], seconds=r["wall_seconds"], loss=r["final_loss"])
            )  # the end of the window (an overlapped round's outcome applied)
        # the start (0 bytes) at 0.01 MB, so that the log axis shows it
        by_bytes.plot([max(p["tx_bytes"], 1e4) / 1e6 for p in pts], [p["loss"] for p in pts], label=name, **style)
        by_time.plot([p["seconds"] for p in pts], [p["loss"] for p in pts], label=name, **style)
    by_bytes.set_xscale("log")
    by_bytes.set_xlabel("MB sent per peer (eth0 tx; log; the start at 0.01)")
    by_time.set_xlabel("wall seconds of training (held-out evaluations excluded)")
    by_samples.set_xlabel("samples the swarm trained on (all peers)")
    for ax in (by_bytes, by_time, by_samples):
        ax.set_ylabel("held-out ELECTRA loss (mean over peers)")
        ax.grid(alpha=0.3)
    by_samples.legend(fontsize=7)
    fig.suptitle("bench/swarm.py --model electra: 100 mbit links, per-peer CPU budgets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_json(path: Path, settings: dict, sizes: dict, rows: list[dict], cores: int | None) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    payload = dict(settings=settings, model=sizes, rows=rows, comparisons=comparisons(rows), machine_cores=cores)
    path.write_text(json.dumps(clean(payload), indent=1) + "\n")
