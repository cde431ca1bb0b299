import pytest
from helpers import SHARED_DATA

from dni_pipeline.core.errors import UserError
from kg.datasets import SHIPPED, load_kg, read_triples, with_reciprocals
from kg.ranking import AnswerIndex


def test_shipped_datasets_have_the_published_sizes():
    sizes = {name: load_kg(name) for name in ("nations", "umls", "kinships")}
    assert (sizes["nations"].num_entities, sizes["nations"].num_relations) == (14, 55)
    assert [len(sizes["nations"].splits[s]) for s in ("train", "valid", "test")] == [1592, 199, 201]
    assert (sizes["umls"].num_entities, len(sizes["umls"].splits["test"])) == (135, 661)
    assert (sizes["kinships"].num_entities, len(sizes["kinships"].splits["train"])) == (104, 8544)
    assert all(n == 0 for d in sizes.values() for n in d.unseen.values())
    assert set(SHIPPED) >= {"countries_s1", "countries_s2", "countries_s3"}


def test_wn18rr_from_the_data_dir_counts_unseen_test_triples(tmp_path):
    if not (SHARED_DATA / "kg" / "wn18rr" / "train.txt").is_file():
        pytest.skip("wn18rr mirror not found")
    data = load_kg("wn18rr", str(SHARED_DATA))
    assert data.num_relations == 11 and len(data.splits["train"]) == 86835
    assert data.unseen["test"] == 210 and len(data.splits["test"]) == 3134 - 210


def test_reciprocals_and_the_answer_index():
    data = load_kg("nations")
    both = with_reciprocals(data.splits["train"], data.num_relations)
    assert len(both) == 2 * len(data.splits["train"])
    h, r, t = data.splits["train"][0]
    index = AnswerIndex(with_reciprocals(data.all_known(), data.num_relations), data.num_entities, 2 * data.num_relations)
    assert t in index.of(h, r) and h in index.of(t, r + data.num_relations)


def test_bad_files_and_missing_datasets(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a\tb\tc\nonly\ttwo\n")
    with pytest.raises(UserError, match="bad.txt:2 is not head<TAB>relation<TAB>tail"):
        read_triples(bad)
    with pytest.raises(UserError, match="dataset 'fb15k237' not found in"):
        load_kg("fb15k237", str(tmp_path))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.txt").write_text("a\tr\tb\n")
    with pytest.raises(UserError, match="valid.txt is missing"):
        load_kg("mine", str(tmp_path))


def test_download_verifies_checksums_and_leaves_nothing_partial(tmp_path, monkeypatch):
    if not (SHARED_DATA / "kg" / "wn18rr" / "train.txt").is_file():
        pytest.skip("wn18rr mirror not found")
    corrupt = tmp_path / "corrupt" / "wn18rr"
    corrupt.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (corrupt / f"{split}.txt").write_text("a\tr\tb\n")
    monkeypatch.setattr("kg.datasets.KG_MIRRORS", ((tmp_path / "corrupt").as_uri() + "/",))
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="could not download train.txt from any mirror"):
        load_kg("wn18rr", str(data_dir), download=True)
    assert list((data_dir / "kg" / "wn18rr").iterdir()) == []
    monkeypatch.setattr("kg.datasets.KG_MIRRORS", ((tmp_path / "corrupt").as_uri() + "/", (SHARED_DATA / "kg").as_uri() + "/"))
    data = load_kg("wn18rr", str(data_dir), download=True)
    assert len(data.splits["train"]) == 86835 and (data_dir / "kg" / "wn18rr" / "test.txt").is_file()
