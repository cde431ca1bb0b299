"""Integration: graph 1 completed with the help of graph 2, merged through an alignment, as a completion dataset.

Held out of graph 1 for validation and test: `holdout` of its triples each, drawn at random among those whose
entities and relation all occur in another triple of graph 1 that stays in training (so graph 1 alone can
score them). Training: graph 1's other triples, plus, when merged, every triple of graph 2 with each aligned
entity replaced by its partner in graph 1; the relations of the two graphs stay apart (`g1:` and `g2:`).
Entities are named by URI. The folder (train.txt, valid.txt, test.txt) is what `kg train` reads, so the same
completion job runs on graph 1 alone, on the merge by a found alignment and on the merge by the reference one.
"""

from pathlib import Path

import numpy as np

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.files import atomic_path

from .data import AlignmentData

__all__ = ["ALIGNMENTS", "hold_out", "merged_triples", "read_alignment_tsv", "write_completion_dataset"]

ALIGNMENTS = ("none", "reference")  # or the path of a run's alignments.tsv


def hold_out(triples: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to `count` triples whose removal leaves each of their entities and their relation in another."""
    entity_uses = np.bincount(triples[:, [0, 2]].ravel())
    relation_uses = np.bincount(triples[:, 1])
    chosen = []
    for i in rng.permutation(len(triples)):
        h, r, t = triples[i]
        if len(chosen) == count:
            break
        if entity_uses[h] > 1 and entity_uses[t] > 1 and relation_uses[r] > 1 and (h != t or entity_uses[h] > 2):
            entity_uses[h] -= 1
            entity_uses[t] -= 1
            relation_uses[r] -= 1
            chosen.append(i)
    return np.array(chosen, dtype=np.int64)


def read_alignment_tsv(path: Path, data: AlignmentData) -> np.ndarray:
    """(graph 1 entity, graph 2 entity) pairs of an alignments.tsv (URI, URI, score), as entity ids."""
    ids = {uri: i for i, uri in enumerate(data.uris)}
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3 or fields[0] not in ids or fields[1] not in ids:
            raise UserError(f"{path}:{number} is not URI<TAB>URI<TAB>score of this pair's graphs: give the "
                            f"alignments.tsv of a `kg align` run on {data.name}")
        pairs.append((ids[fields[0]], ids[fields[1]]))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def merged_triples(data: AlignmentData, pairs: np.ndarray) -> list[tuple[str, str, str]]:
    """Graph 2's triples with every aligned entity named as its graph-1 partner, each distinct triple once."""
    names = list(data.uris)
    for a, b in pairs:
        names[b] = data.uris[a]
    return sorted({(names[h], f"g2:{r}", names[t]) for h, r, t in data.triples2.tolist()})


def _graph1(data: AlignmentData, triples: np.ndarray) -> list[tuple[str, str, str]]:
    return [(data.uris[h], f"g1:{r}", data.uris[t]) for h, r, t in triples.tolist()]


def write_completion_dataset(data: AlignmentData, alignment: str, folder: Path, holdout: float = 0.05,
                             seed: int = 0) -> dict:
    """Write train/valid/test.txt for graph 1 completed alone (`none`) or merged with graph 2 through the
    `reference` alignment or a run's alignments.tsv (its pairs with the seeds). Returns the counts written."""
    if not 0 < holdout < 0.5:
        raise UserError(f"--holdout must lie in (0, 0.5) (got {holdout}): 0.05 holds out 5% for test and 5% for valid")
    count = int(round(holdout * len(data.triples1)))
    held = hold_out(data.triples1, 2 * count, np.random.default_rng(seed))
    kept = np.setdiff1d(np.arange(len(data.triples1)), held)
    train = _graph1(data, data.triples1[kept])
    if alignment != "none":
        if alignment == "reference":
            pairs = np.concatenate([data.train_pairs, data.test_pairs])
        else:
            pairs = np.concatenate([data.train_pairs, read_alignment_tsv(Path(alignment), data)])
        train += merged_triples(data, pairs)
    splits = {"train": train, "valid": _graph1(data, data.triples1[held[:count]]),
              "test": _graph1(data, data.triples1[held[count:]])}
    folder.mkdir(parents=True, exist_ok=True)
    for split, triples in splits.items():
        with atomic_path(folder / f"{split}.txt") as tmp:
            tmp.write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples), encoding="utf-8")
    return {split: len(triples) for split, triples in splits.items()}
