"""What each export of the demo-sized model costs in downstream quality: `coordinator evaluate` of every export
beside the fp32 model it was made from, same tasks, seeds and budget (issue 23's score changes).

Grows the demo model (MiniLM 2x wide by configs/demo.yaml: a 768x6 ELECTRA discriminator) into ``--work`` once,
writes the int8, bf16, pruned (``--fractions``) and distilled exports there with ``coordinator.export`` (kept for
reruns; ``bench/exports.py`` uses the same layout and times them), then evaluates:

- the fp32 model at the default budget (the top layer fine-tuned) and on frozen features (``--train-layers 0``);
- int8 on frozen features only (its weights are int8 buffers, not trainable: ``coordinator.export.scores``), against
  fp32 on frozen features;
- bf16, pruned and distilled at the default budget, against fp32 at the default budget.

Prints per form and task the mean ± sd over seeds, the change against its fp32 row in points (accuracy and
Spearman x 100), and the mean over tasks as a share of fp32's; writes everything to ``--json``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/export_scores.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.exports import distilled_export, ensure_export, grow_demo  # noqa: E402

logger = logging.getLogger("export_scores")


def make_exports(grown: Path, work: Path, fractions: list[float], distill_steps: int,
                 student_layers: int | None = None, only: list[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """The exports in ``work``, made there unless already; ``only``: just these names (the others are not made)."""
    from coordinator.export import ExportOptions

    config = str(ROOT / "configs" / "demo.yaml")
    wanted = {"int8": ExportOptions(form="int8"), "bf16": ExportOptions(form="bf16")}
    for f in fractions:
        wanted[f"pruned-{f:g}"] = ExportOptions(form="pruned", fraction=f, config=config, batch_size=8, batches=4)
    name, options = distilled_export(distill_steps, student_layers)
    wanted[name] = options
    if only:
        wanted = {k: v for k, v in wanted.items() if k in only}
    for name, options in wanted.items():
        ensure_export(grown, options, work / name)
    return {name: work / name for name in wanted}


def row(report, parameters: int | None = None) -> dict:
    model = report.models[0]
    tasks = {t.task: {"metric": t.metric, "scores": t.scores, "mean": t.mean, "sd": t.sd} for t in model.tasks}
    return {"parameters": parameters or model.encoder_parameters, "tasks": tasks, "seconds": round(report.seconds)}


def compare(result: dict, base: dict) -> dict:
    """Change in points (x 100) per task and the mean over tasks as a share of the baseline's."""
    delta = {k: round(100 * (v["mean"] - base["tasks"][k]["mean"]), 2) for k, v in result["tasks"].items()}
    mean = statistics.fmean(v["mean"] for v in result["tasks"].values())
    base_mean = statistics.fmean(v["mean"] for v in base["tasks"].values())
    return {"points": delta, "retention": round(mean / base_mean, 4),
            "parameter_share": round(result["parameters"] / base["parameters"], 4)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/warmswarm-bench-exports", help="kept between runs (grown model, exports)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--distill_steps", type=int, default=60)
    p.add_argument(
        "--student_layers",
        type=int,
        default=None,
        help="the distilled student's layers (default: half); its export is distilled-Nlayers",
    )
    p.add_argument("--forms", nargs="+", help="only these exports (names as in --work), e.g. int8 bf16")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "export_scores.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from coordinator.evaluation.run import evaluate_checkpoint
    from coordinator.evaluation.spec import EvaluationSpec, FinetuneBudget
    from coordinator.export.scores import evaluate_export

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    grown = grow_demo(work)
    exports = make_exports(grown, work, args.fractions, args.distill_steps, args.student_layers, args.forms)
    default = EvaluationSpec(seeds=args.seeds, references=(), heldout_batches=0)
    frozen = replace(default, budget=FinetuneBudget(train_layers=0))
    quiet = logger.debug
    out: dict = {"seeds": args.seeds, "budget": vars(default.budget), "frozen_budget": vars(frozen.budget),
                 "model": str(grown), "rows": {}}  # fmt: skip
    for name, spec in (("fp32", default), ("fp32-frozen", frozen)):
        logger.info("evaluating %s", name)
        out["rows"][name] = row(evaluate_checkpoint(grown, spec, progress=quiet))
    for name, path in exports.items():
        spec = frozen if name == "int8" else default
        logger.info("evaluating %s", name)
        result = row(evaluate_export(path, spec, progress=quiet))
        result["export"] = json.loads((path / "export.json").read_text())["result"]
        result["against"] = "fp32-frozen" if name == "int8" else "fp32"
        result.update(compare(result, out["rows"][result["against"]]))
        out["rows"][name] = result
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    tasks = list(out["rows"]["fp32"]["tasks"])
    print("| model | against | params | " + " | ".join(tasks) + " | mean vs baseline |")
    print("|---|---|---|" + "---|" * len(tasks) + "---|")
    for name, r in out["rows"].items():
        cells = []
        for t in tasks:
            v = r["tasks"][t]
            change = f" ({r['points'][t]:+.1f})" if "points" in r else ""
            cells.append(f"{v['mean']:.3f} ± {v['sd']:.3f}{change}")
        share = f"{100 * r['retention']:.1f} %" if "retention" in r else "-"
        head = f"| {name} | {r.get('against', '-')} | {r['parameters'] / 1e6:.1f} M | "
        print(head + " | ".join(cells) + f" | {share} |")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
