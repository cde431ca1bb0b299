"""Knowledge-graph datasets: TSV triples (head, relation, tail) mapped to integer ids.

The small benchmarks (nations, umls, kinships, countries_s1..s3) ship inside the package; others
(wn18rr, fb15k237, or any folder with train.txt, valid.txt and test.txt) are read from a data
directory, or downloaded (`download`, sha256-checked) into it or the cache. Entities and relations
are numbered from the training split. Valid and test triples that mention an entity or relation
never seen in training cannot be scored by an embedding model: by
default they are left out of evaluation and counted (`unseen`), as LibKGE does; the `error` policy
refuses such a dataset instead.
"""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.files import fetch_verified
from dni_pipeline.core.settings import CACHE_DIR, DATA_DIR_ENV

__all__ = ["DOWNLOADS", "SHIPPED", "KGDataset", "download_kg", "load_kg", "read_triples", "with_reciprocals"]

SHIPPED = ("nations", "umls", "kinships", "countries_s1", "countries_s2", "countries_s3")
PACKAGE_DATA = Path(__file__).parent / "data"
SPLITS = ("train", "valid", "test")
UNSEEN_POLICIES = ("drop", "error")
# The RotatE authors' copies (byte-identical to ConvE's and PyKEEN's), at a pinned commit.
KG_MIRRORS = ("https://raw.githubusercontent.com/DeepGraphLearning/KnowledgeGraphEmbedding/"
              "617062aaedf53bf4d6b44450a580a96dc30e0632/data/",)
# name -> (folder on the mirror, split -> sha256 of the file)
DOWNLOADS = {
    "wn18rr": ("wn18rr", {
        "train": "038612e783c215ee5f3ca9fbfca27b8d0739be1028fe4ee7c174aecf0b83d5df",
        "valid": "453ce7202afa58094a04d2b1560ee2b02660f1c260b32ce6651c8ccedd1028ab",
        "test": "0383bceaaa1096cf3c03ec021ed0048068e2355dbfc0239b292cefdac821cec5"}),
    "fb15k237": ("FB15k-237", {
        "train": "61099230e4439f90885ca9767739e31e8e32f54736fa1c35952b27997bc7c08a",
        "valid": "749cbe9d923bac7b9354da5614ecfed2e0220256d442c3e04a6b303db1f273d9",
        "test": "e2e35e8e6113de220140b6f44dc71a5207b0fc6872d575e874aefe13259b655b"}),
}


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    """Lines of `head<TAB>relation<TAB>tail`; a malformed line is an error naming file and line."""
    triples = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}): it should be UTF-8 text with one triple per line") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise UserError(f"{path}:{number} is not head<TAB>relation<TAB>tail: fix or remove that line")
        triples.append(tuple(p.strip() for p in parts))
    return triples


@dataclass
class KGDataset:
    name: str
    entities: list[str]
    relations: list[str]
    splits: dict[str, np.ndarray]  # split -> (n, 3) int64 ids; valid/test without unseen triples
    unseen: dict[str, int] = field(default_factory=dict)  # split -> triples left out (unseen ids)
    regions: list[str] = field(default_factory=list)  # Countries: the candidate answers of its protocol

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    def all_known(self) -> np.ndarray:
        """Every triple of every split: what the filtered protocol excludes from the ranking."""
        return np.concatenate([self.splits[s] for s in SPLITS])


def with_reciprocals(triples: np.ndarray, num_relations: int) -> np.ndarray:
    """Each (h, r, t) plus (t, r + R, h): every query becomes a tail query."""
    inverse = np.stack([triples[:, 2], triples[:, 1] + num_relations, triples[:, 0]], axis=1)
    return np.concatenate([triples, inverse])


def download_kg(name: str, target: Path) -> None:
    """Fetch train/valid/test.txt of a benchmark into `target`, each checked against its sha256."""
    folder, digests = DOWNLOADS[name]

    def verify(path: Path, digest: str) -> None:
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise UserError(f"{path.name} fails its sha256 check")

    for split, digest in digests.items():
        final = target / f"{split}.txt"
        if not final.exists():
            fetch_verified([f"{mirror}{folder}/{split}.txt" for mirror in KG_MIRRORS], final,
                           lambda path, digest=digest: verify(path, digest))


def _folder(name: str, data_dir: str | None, download: bool) -> Path:
    if name in SHIPPED:
        return PACKAGE_DATA / name
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    candidates = [Path(root) / "kg" / name, Path(root) / name] if root else []
    for folder in [*candidates, CACHE_DIR / "kg" / name]:
        if (folder / "train.txt").is_file():
            return folder
    if download and name in DOWNLOADS:
        target = (Path(root) if root else CACHE_DIR) / "kg" / name
        download_kg(name, target)
        return target
    where = root or f"${DATA_DIR_ENV} (unset)"
    fetch = f", or add --download ({', '.join(DOWNLOADS)})" if name in DOWNLOADS else ""
    raise UserError(f"dataset '{name}' not found in {where}: point --data-dir at a folder holding "
                    f"{name}/train.txt, valid.txt and test.txt{fetch} (shipped: {', '.join(SHIPPED)})")


def load_kg(name: str, data_dir: str | None = None, unseen_policy: str = "drop", download: bool = False) -> KGDataset:
    """Read a dataset; `unseen_policy` says what valid/test triples with an entity or relation absent
    from train do: `drop` (left out of evaluation and counted) or `error` (refuse the dataset).
    With `download`, a missing benchmark of DOWNLOADS is fetched into the data directory (or the cache)."""
    if unseen_policy not in UNSEEN_POLICIES:
        raise UserError(f"unknown unseen policy '{unseen_policy}': use {' or '.join(UNSEEN_POLICIES)}")
    folder = _folder(name, data_dir, download)
    raw = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"{path} is missing: a dataset folder needs train.txt, valid.txt and test.txt")
        raw[split] = read_triples(path)
        if not raw[split]:
            raise UserError(f"{path} holds no triples: every split needs at least one head<TAB>relation<TAB>tail line")
    entities = sorted({x for h, _, t in raw["train"] for x in (h, t)})
    relations = sorted({r for _, r, _ in raw["train"]})
    entity_id = {e: i for i, e in enumerate(entities)}
    relation_id = {r: i for i, r in enumerate(relations)}
    splits, unseen = {}, {}
    for split, triples in raw.items():
        kept = [(entity_id[h], relation_id[r], entity_id[t]) for h, r, t in triples
                if h in entity_id and t in entity_id and r in relation_id]
        if unseen_policy == "error" and len(kept) < len(triples):
            h, r, t = next(x for x in triples if not (x[0] in entity_id and x[2] in entity_id and x[1] in relation_id))
            raise UserError(f"{folder / split}.txt has ({h}, {r}, {t}), whose entity or relation never occurs in "
                            f"train.txt: add it to train or use --unseen drop to leave such triples out and count them")
        unseen[split] = len(triples) - len(kept)
        splits[split] = np.array(kept, dtype=np.int64).reshape(-1, 3)
    regions_file = folder / "regions.list"
    regions = regions_file.read_text(encoding="utf-8").split() if regions_file.is_file() else []
    missing = [r for r in regions if r not in entity_id]
    if missing:
        raise UserError(f"{regions_file} names {', '.join(missing)}, not entities of train.txt: fix the file")
    return KGDataset(name, entities, relations, splits, unseen, regions)
