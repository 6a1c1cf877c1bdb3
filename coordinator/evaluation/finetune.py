"""One fine-tuning run: a task, a model's frozen features, a seed and a budget -> the task's test scores.

Classification: ``TopEncoder`` -> dropout -> linear head, cross-entropy, accuracy on the test split. Similarity
(sentence-transformers' CosineSimilarityLoss): the pooled embeddings of a batch of training documents, the squared
error between the cosine of each pair and its rating, Spearman and Pearson correlation on the test pairs. Both use
AdamW (encoder layers at ``lr``, the head at ``head_lr``), linear warm-up and decay, and draw everything random
(head init, dropout, batch order) from ``seed``, so a (model, task, seed, budget) always gives the same score on the
same machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from coordinator.evaluation.encoders import TopEncoder, pad
from coordinator.evaluation.results import FinetuneBudget
from coordinator.evaluation.tasks import ClassificationTask, SimilarityTask

EVAL_BATCH = 64


def _optimizer(
    top: TopEncoder, head: nn.Module | None, budget: FinetuneBudget
) -> tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None]:
    groups = [{"params": list(top.parameters()), "lr": budget.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": budget.head_lr})
    groups = [g for g in groups if g["params"]]
    if not groups or budget.steps == 0:
        return None, None
    opt = torch.optim.AdamW(groups, weight_decay=budget.weight_decay)
    warmup = max(1, math.ceil(budget.steps * budget.warmup_fraction))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (budget.steps - step) / (budget.steps - warmup + 1))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _batches(n: int, size: int, steps: int, generator: torch.Generator):
    """``steps`` batches of indices into ``range(n)``: shuffled epochs, a new order each epoch."""
    order: list[int] = []
    for _ in range(steps):
        while len(order) < min(size, n):
            order += torch.randperm(n, generator=generator).tolist()
        batch, order = order[: min(size, n)], order[min(size, n) :]
        yield batch


def _step(opt, schedule, loss: torch.Tensor, params) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    schedule.step()


def finetune_classifier(
    task: ClassificationTask,
    encoder: nn.Module,
    train: list[torch.Tensor],
    test: list[torch.Tensor],
    seed: int,
    budget: FinetuneBudget,
) -> dict[str, float]:
    """``train``/``test`` are the frozen features of ``task.train``/``task.test`` (same order). Returns
    ``{"accuracy"}``."""
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)
    top = TopEncoder(encoder, budget.train_layers).train()
    hidden = encoder.config.hidden_size
    head = nn.Sequential(nn.Dropout(encoder.config.hidden_dropout_prob), nn.Linear(hidden, len(task.labels)))
    with torch.no_grad():
        head[1].weight.copy_(torch.randn(head[1].weight.shape, generator=generator) * 0.02)
        head[1].bias.zero_()
    labels = torch.tensor([label for _, label in task.train])
    opt, schedule = _optimizer(top, head, budget)
    params = [*top.parameters(), *head.parameters()]
    for batch in _batches(len(train), budget.batch_size, budget.steps if opt else 0, generator):
        h, mask = pad([train[i] for i in batch])
        _step(opt, schedule, F.cross_entropy(head(top(h, mask)), labels[batch]), params)
    top.eval()
    head.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), EVAL_BATCH):
            h, mask = pad(test[start : start + EVAL_BATCH])
            predicted = head(top(h, mask)).argmax(-1)
            correct += int((predicted == torch.tensor([y for _, y in task.test[start : start + EVAL_BATCH]])).sum())
    return {"accuracy": correct / len(test)}


def finetune_similarity(
    task: SimilarityTask, encoder: nn.Module, features: list[torch.Tensor], seed: int, budget: FinetuneBudget
) -> dict[str, float]:
    """``features`` are the frozen features of ``task.texts``. Each step embeds ``batch_size`` training documents and
    fits the cosine of every rated pair among them to its rating. Returns ``{"spearman", "pearson"}`` on the test
    pairs; with no layer to train (``train_layers`` 0) the frozen encoder is scored as it is."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    top = TopEncoder(encoder, budget.train_layers).train()
    rating = {(i, j): r for i, j, r in task.train}
    docs = sorted({i for i, j, _ in task.train} | {j for _, j, _ in task.train})
    opt, schedule = _optimizer(top, None, budget)
    for batch in _batches(len(docs), budget.batch_size, budget.steps if opt else 0, generator):
        ids = sorted({docs[b] for b in batch})  # a batch that spans two epochs may hold a document twice
        h, mask = pad([features[i] for i in ids])
        emb = F.normalize(top(h, mask), dim=-1)
        pairs = [(a, b, rating[ids[a], ids[b]]) for a in range(len(ids)) for b in range(a + 1, len(ids))]
        if not pairs:
            continue
        a, b, target = (torch.tensor(x) for x in zip(*pairs, strict=True))
        loss = F.mse_loss((emb[a] * emb[b]).sum(-1), target.float())
        _step(opt, schedule, loss, list(top.parameters()))
    top.eval()
    test_docs = sorted({i for i, _, _ in task.test} | {j for _, j, _ in task.test})
    with torch.no_grad():
        pooled = {}
        for start in range(0, len(test_docs), EVAL_BATCH):
            ids = test_docs[start : start + EVAL_BATCH]
            h, mask = pad([features[i] for i in ids])
            pooled.update(zip(ids, F.normalize(top(h, mask), dim=-1), strict=True))
    cosine = torch.stack([(pooled[i] * pooled[j]).sum() for i, j, _ in task.test]).double()
    human = torch.tensor([r for _, _, r in task.test], dtype=torch.float64)
    return {"spearman": pearson(ranks(cosine), ranks(human)), "pearson": pearson(cosine, human)}


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank (as Spearman's correlation needs)."""
    order = x.argsort()
    _, inverse, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    out = torch.empty_like(x, dtype=torch.float64)
    out[order] = (ends - (counts.double() - 1) / 2)[inverse]
    return out


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0
