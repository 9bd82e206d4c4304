"""Bad input: each case a DatasetError naming the file and the 1-based line
(or, where the community data has such cases, a warning with a count)."""
from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from loader_files import replace_line, write_dbp_pair, write_eva, write_openea

from psqe.data import DatasetError, load_dataset


@pytest.fixture
def eva(tmp_path):
    return write_eva(tmp_path / "DBP15K" / "xx_en")


def raises_at(folder, file: str, line: int | None, match: str, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(folder, **kwargs)
    err = info.value
    assert err.path is not None and err.path.name == file and err.line == line
    assert (f"{file}:{line}: " if line is not None else f"{file}: ") in str(err)
    return err


@pytest.mark.parametrize("missing", ["ent_ids_2", "triples_1"])
def test_missing_required_file_eva(eva, missing):
    (eva / missing).unlink()
    raises_at(eva, missing, None, rf"missing required file '{missing}' \(detected layout: EVA/MCLEA")


def test_empty_entity_file(eva):
    (eva / "ent_ids_1").write_text("\n")
    raises_at(eva, "ent_ids_1", None, "lists no entities")


def test_repeated_uri_is_a_warning(eva, caplog):
    replace_line(eva / "ent_ids_2", 6, "11\thttp://dbpedia.org/resource/E6")
    with caplog.at_level(logging.WARNING, logger="psqe.data"):
        pair = load_dataset(eva)
    assert "1 URIs of ent_ids_2 name two entity ids" in caplog.text and pair.kg2.num_entities == 6


def test_missing_required_file_openea(tmp_path):
    folder = write_openea(tmp_path / "oea")
    (folder / "ent_links").unlink()
    raises_at(folder, "ent_links", None, r"missing required file 'ent_links' \(detected layout: OpenEA")


def test_missing_fold_file_openea(tmp_path):
    folder = write_openea(tmp_path / "oea")
    (folder / "721_5fold" / "2" / "valid_links").unlink()
    raises_at(folder, "valid_links", None, "fold folder 2")


def test_fold_parts_must_not_overlap_openea(tmp_path):
    """A fold whose test_links repeat a train link would let a model be scored on what it trained on."""
    folder = write_openea(tmp_path / "oea")
    (folder / "721_5fold" / "2" / "test_links").write_text("http://d/c\thttp://w/Q3\nhttp://d/a\thttp://w/Q1\n")
    raises_at(folder, "test_links", 2, r"'http://d/a' -> 'http://w/Q1' is also in this fold's train_links")
    assert load_dataset(write_openea(tmp_path / "ok")).splits["1"]["test"].shape == (1, 2)  # folds may share links


def test_wrong_field_count(eva):
    replace_line(eva / "triples_1", 3, "2\t1")
    raises_at(eva, "triples_1", 3, "expected 3 TAB-separated fields, found 2")


def test_wrong_field_count_in_link_file(eva):
    replace_line(eva / "ill_ent_ids", 2, "1 7")  # a space, not a TAB
    raises_at(eva, "ill_ent_ids", 2, "expected 2 TAB-separated fields, found 1")


def test_non_integer_id(eva):
    replace_line(eva / "ent_ids_2", 2, "7x\thttp://dbpedia.org/resource/E7")
    raises_at(eva, "ent_ids_2", 2, "field 1 is not an integer id: '7x'")


@pytest.mark.parametrize("field", ["0_1", "\u0661", "1.0"])  # int() takes the first two; a file must not
def test_integer_ids_are_ascii_digits(eva, field):
    replace_line(eva / "ill_ent_ids", 2, f"{field}\t7")
    raises_at(eva, "ill_ent_ids", 2, f"field 1 is not an integer id: {field!r}")


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_empty_link_file(eva, text):
    (eva / "ill_ent_ids").write_text(text)
    raises_at(eva, "ill_ent_ids", None, "lists no links")


def test_non_integer_id_in_triples(eva):
    replace_line(eva / "triples_2", 4, "9\tr\t10")
    raises_at(eva, "triples_2", 4, "field 2 is not an integer id: 'r'")


def test_id_out_of_int64_range(eva):
    replace_line(eva / "ill_ent_ids", 2, "1\t99999999999999999999")
    raises_at(eva, "ill_ent_ids", 2, "field 2 is out of the int64 range")


def test_line_numbers_count_blank_lines(eva):
    path = eva / "triples_1"
    path.write_text("0\t0\t1\n\n1\t0\t2\n1\t0\n")
    raises_at(eva, "triples_1", 4, "found 2")


def test_not_utf8(eva):
    (eva / "ent_ids_1").write_bytes(b"0\thttp://a\n1\thttp://\xff\n")
    raises_at(eva, "ent_ids_1", 2, "not UTF-8")


@pytest.mark.parametrize("end", [b"\r", b"\r\n"])
def test_every_file_reads_universal_line_ends(tmp_path, end):
    """CR-only (old Mac) and CRLF files load as the LF file does, in the integer files (numpy's reader) and
    the text ones alike, and a bad line is still named by its number."""
    folder = write_eva(tmp_path / "d")
    want = load_dataset(folder)
    for f in ("ent_ids_1", "ent_ids_2", "triples_1", "triples_2", "ill_ent_ids"):
        (folder / f).write_bytes((folder / f).read_bytes().replace(b"\n", end))
    got = load_dataset(folder)
    assert got.kg1.names == want.kg1.names and torch.equal(got.kg2.triples, want.kg2.triples)
    assert torch.equal(got.links, want.links)
    good = (folder / "ent_ids_1").read_bytes()
    (folder / "ent_ids_1").write_bytes(b"0\thttp://a" + end + b"1\thttp://b" + end + b"2\thttp://\xff" + end)
    raises_at(folder, "ent_ids_1", 3, "not UTF-8")
    (folder / "ent_ids_1").write_bytes(good)
    (folder / "triples_1").write_bytes(b"0\t0\t1" + end + b"1\t0" + end)
    raises_at(folder, "triples_1", 2, "found 2")


def test_duplicate_entity_id_within_file(eva):
    replace_line(eva / "ent_ids_1", 7, "3\thttp://fr.dbpedia.org/resource/Again")
    raises_at(eva, "ent_ids_1", 7, r"duplicate entity id 3 \(first on line 4\)")


def test_duplicate_entity_id_across_files(eva):
    replace_line(eva / "ent_ids_2", 6, "2\thttp://dbpedia.org/resource/Clash")
    raises_at(eva, "ent_ids_2", 6, "duplicate entity id 2: also on line 3 of ent_ids_1")


def test_triple_names_unknown_entity(eva):
    replace_line(eva / "triples_1", 2, "1\t0\t99")
    raises_at(eva, "triples_1", 2, "triple names entity 99, not in ent_ids_1")


def test_triple_names_entity_of_other_graph(eva):
    replace_line(eva / "triples_2", 1, "0\t2\t7")
    raises_at(eva, "triples_2", 1, r"not in ent_ids_2 \(it is an entity of kg1\)")


def test_link_to_unknown_entity(eva):
    replace_line(eva / "ill_ent_ids", 3, "2\t42")
    raises_at(eva, "ill_ent_ids", 3, r"link names 42, not an entity of kg2 \(ent_ids_2\)")


def test_one_to_many_link(eva):
    replace_line(eva / "ill_ent_ids", 5, "1\t10")
    raises_at(eva, "ill_ent_ids", 5, "one-to-many link: kg1 entity 1 is already linked on line 2")


def test_link_file_without_trailing_newline_loads(tmp_path):
    folder = write_eva(tmp_path / "d", link_file="ref_ent_ids", trailing_newline=False)
    assert not (folder / "ref_ent_ids").read_text().endswith("\n")
    assert load_dataset(folder).links.tolist() == [[0, 6], [1, 7], [2, 8], [3, 9]]


def test_missing_link_file_is_a_warning(eva, caplog):
    (eva / "ill_ent_ids").unlink()
    with caplog.at_level(logging.WARNING, logger="psqe.data"):
        pair = load_dataset(eva)
    assert pair.links is None and "without gold links" in caplog.text


def test_attribute_line_for_unknown_uri_is_counted(eva, caplog):
    path = eva / "training_attrs_1"
    path.write_text(path.read_text() + "http://nowhere/X\thttp://a/x\nhttp://nowhere/Y\thttp://a/y\n")
    with caplog.at_level(logging.WARNING, logger="psqe.data"):
        pair = load_dataset(eva)
    assert "2 lines of training_attrs_1 name URIs not in ent_ids_1 (first on line 4)" in caplog.text
    assert pair.warnings and sum(len(a) for a in pair.kg1.attributes) == 6


def test_names_json_with_unknown_id(tmp_path):
    folder = write_dbp_pair(tmp_path, "fr_en")
    path = tmp_path / "DBP15K" / "translated_ent_name" / "dbp_fr_en.json"
    path.write_text('[[0, ["a"]], [99, ["b"]]]')
    raises_at(folder, "dbp_fr_en.json", None, "1 entries name ids of neither graph, e.g. 99")
    path.write_text('[[0, ["a"]],\n [1, "b"')
    raises_at(folder, "dbp_fr_en.json", 2, "invalid JSON")


def image_pickle(tmp_path, images) -> None:
    (tmp_path / "pkls" / "fr_en_GA_id_img_feature_dict.pkl").write_bytes(pickle.dumps(images))


def test_nan_image_features(tmp_path):
    folder = write_dbp_pair(tmp_path, "fr_en")
    image_pickle(tmp_path, {0: np.ones(4), 3: np.array([1.0, np.nan, 0.0, 0.0])})
    raises_at(folder, "fr_en_GA_id_img_feature_dict.pkl", None, "1 feature rows hold NaN/inf, the first for id 3")


def test_inf_features_from_npy(tmp_path):
    folder = write_dbp_pair(tmp_path, "fr_en", with_images=())
    table = np.zeros((11, 2), dtype=np.float32)
    table[9, 1] = np.inf
    np.save(tmp_path / "img.npy", table)
    raises_at(folder, "img.npy", None, r"the first for id 9 \(row 9\)", image_features=tmp_path / "img.npy")


def test_ragged_image_features(tmp_path):
    folder = write_dbp_pair(tmp_path, "fr_en")
    image_pickle(tmp_path, {0: np.ones(4), 5: np.ones(3)})
    raises_at(folder, "fr_en_GA_id_img_feature_dict.pkl", None, r"entry for id 5 has 3 values, the first entry \(id 0\) has 4")


def test_image_features_for_unknown_ids(tmp_path):
    folder = write_dbp_pair(tmp_path, "fr_en")
    image_pickle(tmp_path, {0: np.ones(4), 11: np.ones(4), 12: np.ones(4)})
    raises_at(folder, "fr_en_GA_id_img_feature_dict.pkl", None, "2 feature ids are entities of neither graph")


@pytest.mark.parametrize("file, line, text, message", [
    ("rel_triples_1", 2, "http://d/b\thttp://d/r2\thttp://d/c ", r"field 3 \(tail\) has spaces around it: 'http://d/c '"),
    ("rel_triples_1", 2, "http://d/b\t\thttp://d/c", r"field 2 \(relation\) is empty"),
    ("attr_triples_2", 1, " http://w/Q4\thttp://w/label\tq4", r"field 1 \(entity\) has spaces around it"),
    ("ent_links", 3, "http://d/c\t ", r"field 2 \(kg2 entity\) is empty"),
])
def test_openea_padded_or_empty_names(tmp_path, file, line, text, message):
    """A padded URI would be a new entity beside the real one (its triples and links moved to it, silently)."""
    folder = write_openea(tmp_path / "oea")
    replace_line(folder / file, line, text)
    raises_at(folder, file, line, message)


def test_openea_wrong_field_count(tmp_path):
    folder = write_openea(tmp_path / "oea")
    replace_line(folder / "rel_triples_2", 2, "http://w/Q3\thttp://w/P1")
    raises_at(folder, "rel_triples_2", 2, "expected 3 TAB-separated fields, found 2")


def test_openea_link_to_unknown_entity(tmp_path):
    folder = write_openea(tmp_path / "oea")
    replace_line(folder / "ent_links", 2, "http://d/b\thttp://w/Q99")
    raises_at(folder, "ent_links", 2, "link names 'http://w/Q99', not an entity of kg2")


def test_openea_one_to_many_link(tmp_path):
    folder = write_openea(tmp_path / "oea")
    replace_line(folder / "ent_links", 4, "http://d/d\thttp://w/Q1")
    raises_at(folder, "ent_links", 4, "one-to-many link: kg2 entity 4 is already linked on line 1")


def test_openea_fold_link_not_gold(tmp_path):
    folder = write_openea(tmp_path / "oea")
    replace_line(folder / "721_5fold" / "1" / "test_links", 1, "http://d/c\thttp://w/Q2")
    raises_at(folder, "test_links", 1, "is not one of the gold links")
