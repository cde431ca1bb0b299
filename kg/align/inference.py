"""From entity embeddings to an alignment: similarity matrices, ranking metrics and one-to-one matching.

- ``cosine``: nearest neighbours by cosine similarity.
- ``csls``: cross-domain similarity local scaling (Lample et al. 2018, "Word translation without parallel data",
  eq. 6): 2 cos(x, y) - r_y(x) - r_x(y), each r the mean cosine of a point to its k nearest neighbours in the
  other set; it lowers the hubs that are every query's neighbour.
- ``sinkhorn``: the CSLS matrix made doubly stochastic by Sinkhorn iterations in the log domain (exp(S / tau)
  with rows and columns normalised in turn), a relaxed one-to-one matching of the two test sets (as LightEA and
  others do); ranked by its entries.

Metrics: the rank of each source's true partner among the candidates (1 + the candidates scored higher, ties
counted half), Hits@k and MRR.
"""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["INFERENCE", "CSLS_K", "SINKHORN_ITERATIONS", "SINKHORN_TAU", "cosine", "csls", "evaluate_alignment",
           "mutual_nearest", "ranking_metrics", "similarity", "sinkhorn", "true_ranks"]

INFERENCE = ("cosine", "csls", "sinkhorn")
CSLS_K = 10  # neighbours of the local scaling (Lample et al.'s choice)
SINKHORN_TAU, SINKHORN_ITERATIONS = 0.05, 20  # fixed, not tuned on the test pairs


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def csls(sim: torch.Tensor, k: int = CSLS_K) -> torch.Tensor:
    """CSLS of a cosine matrix of sources (rows) against candidates (columns)."""
    k_rows, k_cols = min(k, sim.shape[1]), min(k, sim.shape[0])
    row_mean = sim.topk(k_rows, dim=1).values.mean(dim=1, keepdim=True)  # r_y(x): each source's neighbourhood
    col_mean = sim.topk(k_cols, dim=0).values.mean(dim=0, keepdim=True)  # r_x(y): each candidate's
    return 2 * sim - row_mean - col_mean


def sinkhorn(scores: torch.Tensor, tau: float = SINKHORN_TAU, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """log of the doubly-stochastic matrix nearest exp(scores / tau) (square matrices; rows last)."""
    log_p = scores / tau
    for _ in range(iterations):
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
    return log_p


def similarity(source: torch.Tensor, target: torch.Tensor, inference: str) -> torch.Tensor:
    """The score matrix an inference ranks by: sources (rows) against candidates (columns)."""
    sim = cosine(source, target)
    if inference == "cosine":
        return sim
    scores = csls(sim)
    return scores if inference == "csls" else sinkhorn(scores)


def true_ranks(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Rank of column truth[i] in row i: 1 + the columns scored higher, + half the other columns scored the same."""
    true_score = scores.gather(1, truth[:, None])
    higher = (scores > true_score).sum(dim=1)
    ties = (scores == true_score).sum(dim=1) - 1
    return 1 + higher.double() + ties.double() / 2


def ranking_metrics(ranks: torch.Tensor) -> dict:
    ranks = ranks.double()
    return {"hits@1": float((ranks <= 1).double().mean()), "hits@10": float((ranks <= 10).double().mean()),
            "mrr": float((1 / ranks).mean()), "mean_rank": float(ranks.mean())}


def mutual_nearest(scores: torch.Tensor) -> np.ndarray:
    """(row, column) pairs each the other's best: the confident matches bootstrapping adds."""
    best_col, best_row = scores.argmax(dim=1), scores.argmax(dim=0)
    rows = torch.arange(scores.shape[0])
    mutual = best_row[best_col] == rows
    return torch.stack([rows[mutual], best_col[mutual]], dim=1).numpy()


def evaluate_alignment(emb: torch.Tensor, test_pairs: np.ndarray, graph1_size: int) -> dict:
    """Hits@1, Hits@10, MRR of each inference under the standard protocol (each test entity of graph 1 among the
    test entities of graph 2), and of cosine and CSLS ranked among every entity of graph 2 (`all_*`)."""
    source, target = emb[torch.as_tensor(test_pairs[:, 0])], emb[torch.as_tensor(test_pairs[:, 1])]
    truth = torch.arange(len(test_pairs))
    results = {name: ranking_metrics(true_ranks(similarity(source, target, name), truth)) for name in INFERENCE}
    everyone = emb[graph1_size:]
    truth_all = torch.as_tensor(test_pairs[:, 1] - graph1_size)
    for name in ("cosine", "csls"):
        results[f"all_{name}"] = ranking_metrics(true_ranks(similarity(source, everyone, name), truth_all))
    return results
