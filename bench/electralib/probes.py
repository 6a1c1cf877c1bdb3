"""The probes on frozen features (mean of the last hidden states over real tokens), none of them seen in training:
word shuffle, sentence order, Pang & Lee polarity (each a standardised ridge classifier under repeated stratified
5-fold CV) and Lee similarity (Pearson r against human ratings, no training)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from peer.config import DataSpec
from peer.data import build_heldout_batches
from peer.data.embedded import test_data_dir
from peer.objectives.masking import candidate_mask

PROBES = {
    "word_shuffle": "word-shuffle detection (acc.)",
    "sentence_order": "sentence-order detection (acc.)",
    "polarity": "Pang & Lee polarity (acc.)",
    "lee_similarity": "Lee similarity (Pearson r)",
}
CHANCE = {"word_shuffle": 0.5, "sentence_order": 0.5, "polarity": 0.5, "lee_similarity": 0.0}
POLARITY_FILE = "pang_lee_polarity.cor"
LEE_DOCS_FILE = "lee.cor"
LEE_RATINGS_FILE = "similarities0-1.txt"
CV_FOLDS, CV_REPEATS = 5, 3
PROBE_ALPHAS = tuple(10.0**k for k in range(-1, 6))
FEATURE_BATCH = 32


@dataclass
class ProbeData:
    """Inputs of every probe, built once (independent of the encoders and of the training seed)."""

    shuffle_batch: dict[str, torch.Tensor]
    shuffle_labels: np.ndarray
    sop_batch: dict[str, torch.Tensor]
    sop_labels: np.ndarray
    polarity_batch: dict[str, torch.Tensor]
    polarity_labels: np.ndarray
    lee_batch: dict[str, torch.Tensor]
    lee_ratings: np.ndarray  # the upper triangle of the 50 × 50 human similarity matrix


def _concat(batches: list[dict[str, torch.Tensor]], limit: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches])[:limit] for k in batches[0]}


def shuffle_words(batch: dict[str, torch.Tensor], seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Every other sequence with its real, non-special tokens permuted (label 1); the rest unchanged (label 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = batch["input_ids"].clone()
    cand = candidate_mask(batch)
    labels = np.arange(ids.shape[0]) % 2
    for i in np.flatnonzero(labels):
        real = cand[i].nonzero().flatten()
        ids[i, real] = ids[i, real[torch.randperm(len(real), generator=g)]]
    return dict(batch, input_ids=ids), labels


def _encode_texts(tokenizer, texts: list[str], seq: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, truncation=True, max_length=seq, padding="longest", return_tensors="pt")
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": torch.zeros_like(enc["input_ids"]),
    }


def build_probe_data(spec: DataSpec, tokenizer, n_sequences: int) -> ProbeData:
    data_dir = test_data_dir()
    heldout = build_heldout_batches(spec, tokenizer, 64, "electra", math.ceil(n_sequences / 64))
    shuffle_batch, shuffle_labels = shuffle_words(_concat(heldout, n_sequences), seed=0)
    pairs = _concat(build_heldout_batches(spec, tokenizer, 64, "albert", math.ceil(n_sequences / 64)), n_sequences)
    polarity = [
        line.split(" ", 1)
        for line in (data_dir / POLARITY_FILE).read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    lee_docs = [line.strip() for line in (data_dir / LEE_DOCS_FILE).read_text(encoding="latin-1").splitlines()]
    lee_docs = [d for d in lee_docs if d]
    ratings = np.loadtxt(data_dir / LEE_RATINGS_FILE)
    if len(lee_docs) != ratings.shape[0]:
        raise RuntimeError(f"{LEE_DOCS_FILE} has {len(lee_docs)} documents but the ratings are {ratings.shape}")
    return ProbeData(
        shuffle_batch=shuffle_batch,
        shuffle_labels=shuffle_labels,
        sop_batch=pairs,
        sop_labels=pairs.pop("sentence_order_label").numpy(),
        polarity_batch=_encode_texts(tokenizer, [text for _, text in polarity], spec.seq_len),
        polarity_labels=np.array([label == "__label__pos" for label, _ in polarity], dtype=np.int64),
        lee_batch=_encode_texts(tokenizer, lee_docs, spec.seq_len),
        lee_ratings=ratings[np.triu_indices(len(lee_docs), 1)],
    )


@torch.no_grad()
def pooled(encoder: torch.nn.Module, batch: dict[str, torch.Tensor], groups: list[torch.Tensor]) -> np.ndarray:
    """For each 0/1 mask ``[N, L]`` in ``groups``, the mean of the last hidden states over it; concatenated."""
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, batch["input_ids"].shape[0], FEATURE_BATCH):
        rows = slice(start, start + FEATURE_BATCH)
        ids = batch["input_ids"][rows].to(device)
        h = encoder(
            input_ids=ids, attention_mask=batch["attention_mask"][rows].to(device), token_type_ids=torch.zeros_like(ids)
        ).last_hidden_state.float()
        masks = [g[rows].to(device) for g in groups]
        means = [(h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1) for m in masks]
        out.append(torch.cat(means, dim=-1).cpu())
    return torch.cat(out).double().numpy()


def cv_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Mean accuracy of a standardised ridge classifier over repeated stratified 5-fold CV. The ridge penalty is
    chosen inside each training fold by efficient leave-one-out (closed form, so fast and deterministic)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=PROBE_ALPHAS))
    folds = RepeatedStratifiedKFold(n_splits=CV_FOLDS, n_repeats=CV_REPEATS, random_state=0)
    return float(cross_val_score(probe, x, y, cv=folds).mean())


def lee_correlation(features: np.ndarray, ratings: np.ndarray) -> float:
    centred = features - features.mean(0, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True).clip(min=1e-12)
    sims = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
    return float(np.corrcoef(sims, ratings)[0, 1])


def run_probes(encoder: torch.nn.Module, data: ProbeData) -> dict[str, float]:
    encoder.eval()
    sop_real = candidate_mask(data.sop_batch).float()
    seg_b = data.sop_batch["token_type_ids"].float()
    shuffle = pooled(encoder, data.shuffle_batch, [data.shuffle_batch["attention_mask"].float()])
    order = pooled(encoder, data.sop_batch, [sop_real * (1 - seg_b), sop_real * seg_b])
    polarity = pooled(encoder, data.polarity_batch, [data.polarity_batch["attention_mask"].float()])
    lee = pooled(encoder, data.lee_batch, [data.lee_batch["attention_mask"].float()])
    return {
        "word_shuffle": cv_accuracy(shuffle, data.shuffle_labels),
        "sentence_order": cv_accuracy(order, data.sop_labels),
        "polarity": cv_accuracy(polarity, data.polarity_labels),
        "lee_similarity": lee_correlation(lee, data.lee_ratings),
    }
