"""Two knowledge graphs to align, in the five-file form of DBP15K (JAPE's release, as GCN-Align reads it).

A pair's folder holds `ent_ids_1`, `ent_ids_2` (`id<TAB>URI`), `triples_1`, `triples_2` (`head<TAB>relation<TAB>tail`
ids) and `ref_ent_ids` (`id_1<TAB>id_2`, the reference alignment). The file ids are renumbered: graph 1's entities
become 0..n1-1 and graph 2's n1..n1+n2-1 (each in file order), relations 0..R-1 over both graphs. The reference
pairs are split by a seeded permutation: the first `seed_fraction` are the training seeds, the rest the test
(the protocol of JAPE and GCN-Align takes 30%; they take the file's first 30%, Dual-AMN a random 30%, as here).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.settings import DATA_DIR_ENV

__all__ = ["FILES", "AlignmentData", "find_pair_folder", "load_alignment", "read_id_table"]

FILES = ("ent_ids_1", "ent_ids_2", "triples_1", "triples_2", "ref_ent_ids")


@dataclass
class AlignmentData:
    name: str
    uris: list[str]  # new entity id -> URI; graph 1's first
    graph1_size: int  # entities 0..graph1_size-1 are graph 1's, the rest graph 2's
    num_relations: int
    triples1: np.ndarray  # (m1, 3) int64 (head, relation, tail), new ids
    triples2: np.ndarray
    train_pairs: np.ndarray  # (s, 2) int64 (graph 1 entity, graph 2 entity): the seeds
    test_pairs: np.ndarray  # (n, 2) the rest of the reference alignment
    file_ids: np.ndarray  # new entity id -> its id in the files

    @property
    def num_entities(self) -> int:
        return len(self.uris)

    def triples(self) -> np.ndarray:
        return np.concatenate([self.triples1, self.triples2])


def read_id_table(path: Path, columns: int) -> list[list[str]]:
    """Tab-separated rows of `columns` fields; a missing file or a malformed line is one error naming it."""
    if not path.is_file():
        raise UserError(f"{path} is missing: an alignment folder needs {', '.join(FILES)}")
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != columns or not all(f.strip() for f in fields):
                raise UserError(f"{path}:{number} should hold {columns} tab-separated fields: fix or remove that line")
            rows.append([f.strip() for f in fields])
    if not rows:
        raise UserError(f"{path} is empty: it should hold one tab-separated row per line")
    return rows


def _ints(path: Path, rows: list[list[str]]) -> np.ndarray:
    try:
        return np.array([[int(x) for x in row] for row in rows], dtype=np.int64)
    except ValueError:
        raise UserError(f"{path} holds a non-integer id: its ids must be whole numbers") from None


def find_pair_folder(dataset: str, data_dir: str | None) -> Path:
    """`dataset` as DIR/kg-align/NAME, DIR/NAME (DIR: --data-dir or $DNI_PIPELINE_DATA) or a folder path."""
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    candidates = ([Path(root) / "kg-align" / dataset, Path(root) / dataset] if root else []) + [Path(dataset)]
    for folder in candidates:
        if (folder / FILES[0]).is_file():
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise UserError(f"alignment dataset '{dataset}' not found (looked in {where}): point --data-dir at a folder holding "
                    f"kg-align/{dataset}/ with {', '.join(FILES)}")


def load_alignment(dataset: str, data_dir: str | None = None, seed_fraction: float = 0.3,
                   split_seed: int = 0) -> AlignmentData:
    if not 0 < seed_fraction < 1:
        raise UserError(f"--seed-fraction must lie in (0, 1) (got {seed_fraction}): 0.3 is the standard protocol")
    folder = find_pair_folder(dataset, data_dir)
    tables = {name: read_id_table(folder / name, 2 if name.startswith(("ent", "ref")) else 3) for name in FILES}
    ids = [_ints(folder / f"ent_ids_{g}", [[row[0]] for row in tables[f"ent_ids_{g}"]]).ravel() for g in (1, 2)]
    shared = np.intersect1d(ids[0], ids[1])
    if len(shared):
        raise UserError(f"{folder}: ent_ids_1 and ent_ids_2 share entity id {shared[0]} ({len(shared)} shared): the two "
                        "graphs' ids must not overlap; renumber one of them")
    file_ids = np.concatenate(ids)
    new_id = {int(old): new for new, old in enumerate(file_ids)}
    if len(new_id) < len(file_ids):
        raise UserError(f"{folder}: an entity id is listed twice within one ent_ids file: each id must appear once")
    uris = [row[1] for g in (1, 2) for row in tables[f"ent_ids_{g}"]]
    relation_id: dict[int, int] = {}
    triples = []
    for g in (1, 2):
        raw = _ints(folder / f"triples_{g}", tables[f"triples_{g}"])
        own = set(ids[g - 1].tolist())
        bad = [x for x in raw[:, [0, 2]].ravel().tolist() if x not in own]
        if bad:
            raise UserError(f"{folder / f'triples_{g}'} names entity {bad[0]}, not in ent_ids_{g}: a graph's triples must "
                            "use its own entities")
        mapped = np.array([[new_id[h], relation_id.setdefault(r, len(relation_id)), new_id[t]]
                           for h, r, t in raw.tolist()], dtype=np.int64)
        triples.append(mapped)
    reference = _ints(folder / "ref_ent_ids", tables["ref_ent_ids"])
    g1, g2 = set(ids[0].tolist()), set(ids[1].tolist())
    for a, b in reference.tolist():
        if a not in g1 or b not in g2:
            raise UserError(f"{folder / 'ref_ent_ids'} pairs {a} with {b}: the first must be an id of ent_ids_1 and the "
                            "second of ent_ids_2")
    pairs = np.array([[new_id[a], new_id[b]] for a, b in reference.tolist()], dtype=np.int64)
    order = np.random.default_rng(split_seed).permutation(len(pairs))
    cut = int(round(seed_fraction * len(pairs)))
    if cut < 1 or cut >= len(pairs):
        raise UserError(f"--seed-fraction {seed_fraction} of {len(pairs)} reference pairs leaves no seed or no test pair")
    return AlignmentData(name=dataset, uris=uris, graph1_size=len(ids[0]), num_relations=len(relation_id),
                         triples1=triples[0], triples2=triples[1], train_pairs=pairs[order[:cut]],
                         test_pairs=pairs[order[cut:]], file_ids=file_ids)
