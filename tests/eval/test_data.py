"""Readers: both real STS layouts, BEIR files, and clear errors on malformed input."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from embedsvc.errors import InvalidArgument
from embedsvc.eval.data import read_corpus, read_qrels, read_queries, read_sts

DATA = Path("/work/shared/data")
STSB = DATA / "stsb" / "sts-dev.csv"
SICK = DATA / "sick" / "SICK_trial.txt"
real = pytest.mark.skipif(not STSB.is_file(), reason="shared data not present")


@real
def test_real_stsb_dev() -> None:
    pairs = read_sts(STSB)
    assert pairs.format == "stsb"
    assert len(pairs) == 1500 == len(pairs.sentences1) == len(pairs.sentences2)
    assert pairs.scores[0] == 5.0
    assert pairs.sentences1[0] == "A man with a hard hat is dancing."
    # line 268 holds quotes inside a sentence: QUOTE_NONE keeps them verbatim
    assert pairs.sentences2[267] == 'a woman is standing by a pillar where "u2" is written.'
    # line 1479 has two extra source fields after sentence2
    assert pairs.sentences1[1478] == "US Supreme Court limits president's recess appointments power"
    assert pairs.sentences2[1478] == "High court checks President's recess appointment power"
    assert pairs.scores[1478] == 5.0
    assert all(0.0 <= s <= 5.0 for s in pairs.scores)


@real
def test_real_sick_trial() -> None:
    pairs = read_sts(SICK)
    assert pairs.format == "sick"
    assert len(pairs) == 500
    assert pairs.sentences1[0].startswith("The young boys are playing outdoors")
    assert pairs.scores[0] == 3.6
    assert pairs.sentences2[-1] == "A dog is swimming after a tennis ball"
    assert all(1.0 <= s <= 5.0 for s in pairs.scores)


def test_stsb_extra_fields_quotes_and_crlf(tmp_path: Path) -> None:
    f = tmp_path / "any-name.txt"
    f.write_bytes(
        b'g\tf\t2012\t0001\t4.5\tHe said "hi.\tShe said "hello"\r\n'
        b"g\tf\t2012\t0002\t1\ta\tb\tsource one\tsource two\r\n"
    )
    pairs = read_sts(f)
    assert pairs.format == "stsb"
    assert pairs.sentences1 == ['He said "hi.', "a"]
    assert pairs.sentences2 == ['She said "hello"', "b"]
    assert pairs.scores == [4.5, 1.0]


def test_sick_detected_by_header_not_name(tmp_path: Path) -> None:
    f = tmp_path / "sts-test.csv"
    f.write_text(
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
        '1\tA "quoted" man\tA man\t4.9\tENTAILMENT\n'
        "2\tA cat\tA car\t1.2\tNEUTRAL\n"
    )
    pairs = read_sts(f)
    assert pairs.format == "sick"
    assert pairs.sentences1 == ['A "quoted" man', "A cat"]
    assert pairs.scores == [4.9, 1.2]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("g\tf\t2012\t0001\t4.5\ta\tb\ng\tf\t2012\t0002\t1\tonly six\n", ":2:"),
        ("g\tf\t2012\t0001\tfive\ta\tb\n", ":1:"),
        ("pair_ID\tsentence_A\tsentence_B\trelatedness_score\n1\ta\tb\tnan\n", ":2:"),
        ("pair_ID\tsentence_A\tsentence_B\trelatedness_score\n1\ta\n", ":2:"),
        ("pair_ID\tsentence_A\tscore\n1\ta\t1\n", ":1:"),
    ],
)
def test_malformed_sts_names_file_and_line(tmp_path: Path, content: str, where: str) -> None:
    f = tmp_path / "bad.tsv"
    f.write_text(content)
    with pytest.raises(InvalidArgument) as err:
        read_sts(f)
    assert str(f) + where in err.value.message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such file"):
        read_sts(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(InvalidArgument, match="empty"):
        read_sts(tmp_path / "empty.csv")


def test_beir_readers(tmp_path: Path) -> None:
    body = b'{"_id": "d1", "title": "T", "text": "x"}\n{"_id": 2, "text": "y"}\n'
    with gzip.open(tmp_path / "corpus.jsonl.gz", "wb") as fh:
        fh.write(body)
    corpus = read_corpus(tmp_path / "corpus.jsonl.gz")
    assert list(corpus) == ["d1", "2"]
    assert corpus["d1"].passage() == "T x"
    assert corpus["2"].passage() == "y"  # no title: stripped, as BEIR does
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "hi", "metadata": {}}\n')
    assert read_queries(tmp_path / "queries.jsonl") == {"q1": "hi"}
    (tmp_path / "qrels.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\t2\t0\r\n")
    assert read_qrels(tmp_path / "qrels.tsv") == {"q1": {"d1": 1, "2": 0}}


@pytest.mark.parametrize(
    ("name", "content", "reader", "where"),
    [
        ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', read_corpus, ":2:"),
        ("corpus.jsonl", '{"_id": "a"}\n{"_id": "a"}\n', read_corpus, ":2:"),
        ("queries.jsonl", '{"text": "x"}\n', read_queries, ":1:"),
        ("qrels.tsv", "q\td\ts\n", read_qrels, ":1:"),
        ("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\n", read_qrels, ":2:"),
        ("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", read_qrels, ":2:"),
    ],
)
def test_malformed_beir(tmp_path: Path, name: str, content: str, reader, where: str) -> None:
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(InvalidArgument) as err:
        reader(f)
    assert str(f) + where in err.value.message
