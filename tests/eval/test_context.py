"""``embedsvc eval context`` on tiny handmade files in both QA formats, with the debug engine."""

from __future__ import annotations

import gzip
import json

import pytest
from typer.testing import CliRunner

from embedsvc.errors import InvalidArgument
from embedsvc.eval.cli import eval_app
from embedsvc.eval.context import evaluate_context, read_qa
from embedsvc.rag.adaptive_k import AdaptiveKConfig
from embedsvc.strategies import get_strategy

# question i's words appear only in its gold passage; the fillers share no word with any question
TOPICS = ["apple orchard harvest", "river delta flood", "violin concerto premiere"]


def _nq_rows() -> list[dict]:
    rows = []
    for i, topic in enumerate(TOPICS):
        gold = {"title": f"T{i}", "text": f"{topic} facts", "hasanswer": True, "isgold": True}
        rows.append({"question": f"what about {topic}", "answers": ["x"], "ctxs": [gold]})
    # a question whose gold text repeats question 0's passage: deduplicated to one pool entry
    rows.append(
        {
            "question": "apple orchard harvest again",
            "answers": ["x"],
            "ctxs": [{"title": "T0 copy", "text": "apple orchard harvest facts"}],
        }
    )
    for j in range(12):
        rows.append(
            {
                "question": f"filler question {j}",
                "answers": ["x"],
                "ctxs": [{"title": "", "text": f"zzq{j} wwk{j} lorem{j}"}],
            }
        )
    return rows


def _hotpot_rows() -> list[dict]:
    rows = []
    for i, topic in enumerate(TOPICS):
        context = [[f"G{i}a", [f"{topic}", " indeed"]], [f"G{i}b", [f"{topic} too"]]]
        context += [[f"D{i}{j}", [f"qqz{j} noise{i}{j} blah{j} mmm{i}"]] for j in range(8)]
        rows.append(
            {
                "_id": str(i),
                "question": topic,
                "answer": "x",
                "supporting_facts": [[f"G{i}a", 0], [f"G{i}b", 0]],
                "context": context,
                "type": "bridge",
                "level": "easy",
            }
        )
    return rows


@pytest.fixture
def nq_file(tmp_path):
    path = tmp_path / "tiny-nq.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in _nq_rows():
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def hotpot_file(tmp_path):
    path = tmp_path / "tiny_hotpot.json"  # the name says nothing; the content decides
    path.write_text(json.dumps(_hotpot_rows()))
    return path


def test_read_nq_pool_is_the_deduplicated_union(nq_file):
    qa = read_qa(nq_file)
    assert qa.format == "nq_open_gold" and len(qa) == 16
    assert len(qa.passages) == 15  # 16 ctxs, one repeated text
    assert qa.gold[0] == qa.gold[3]  # identical text -> the same gold passage
    assert all(p is None for p in qa.pools)


def test_read_hotpot_per_question_pools(hotpot_file):
    qa = read_qa(hotpot_file)
    assert qa.format == "hotpotqa" and len(qa) == 3
    assert all(len(p) == 10 for p in qa.pools)
    assert all(len(g) == 2 and g <= set(p.tolist()) for g, p in zip(qa.gold, qa.pools))
    assert qa.passages[qa.pools[0][0]] == "G0a apple orchard harvest indeed"


@pytest.mark.parametrize("text", ["", "not json", "42"])
def test_unknown_format_is_invalid_argument(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InvalidArgument):
        read_qa(path)


def test_missing_fields_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "ctxs": []}) + "\n")
    with pytest.raises(InvalidArgument, match="line 1"):
        read_qa(path)


def test_nq_numbers(nq_file, tmp_path):
    out = evaluate_context(get_strategy("debug"), nq_file, cache_dir=tmp_path / "cache")
    assert out["n_questions"] == 16 and out["n_passages"] == 15
    assert out["full_mean_k"] == 15 and out["full_recall"] == 100.0
    assert out["fixed1_mean_k"] == 1 and out["fixed20_mean_k"] == 15  # k capped by the pool
    # the topic questions find their gold first; adaptive keeps cut + 1 + 5 passages
    assert out["fixed1_recall"] >= 100.0 * 4 / 16
    assert 6 <= out["adaptive_mean_k"] <= 15
    assert out["fixed_at_mean_k"] == round(out["adaptive_mean_k"])
    for key in ("accept_recall_ge_fixed_at_mean_k", "accept_vs_fixed20"):
        assert isinstance(out[key], bool)


def test_hotpot_numbers_and_budget(hotpot_file, tmp_path):
    cache = {"cache_dir": tmp_path / "cache"}
    out = evaluate_context(get_strategy("debug"), hotpot_file, AdaptiveKConfig(buffer=0), **cache)
    # both gold paragraphs share words with the question, the distractors none: a clean drop
    assert out["adaptive_mean_k"] == 2 and out["adaptive_recall"] == 100.0
    assert out["fixed1_recall"] == 50.0 and out["full_mean_k"] == 10
    budget = evaluate_context(
        get_strategy("debug"), hotpot_file, AdaptiveKConfig(buffer=0, token_budget=7), **cache
    )
    assert budget["adaptive_mean_k"] == 1 and budget["adaptive_mean_tokens"] == 5
    assert budget["adaptive_recall"] == 50.0  # 5 + 5 words > 7: the second gold is cut


def test_cli_json(hotpot_file, tmp_path):
    result = CliRunner().invoke(
        eval_app,
        [
            "context",
            "--strategy",
            "debug",
            "--file",
            str(hotpot_file),
            "--json",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["task"] == "context" and out["format"] == "hotpotqa"


def test_cli_bad_file_exits_2(tmp_path):
    result = CliRunner().invoke(
        eval_app, ["context", "--strategy", "debug", "--file", str(tmp_path / "missing.json")]
    )
    assert result.exit_code == 2
