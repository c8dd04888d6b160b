"""`app.py eval` on conversation lines: one cache per conversation, accuracy and agreement per turn."""

import json

from app import main
from backends import media, runner
from backends.models import load_model
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RunRequest
from tests.conftest import scene

QS = ["how many shapes are there?", "what shape is at the top left?", "how many red shapes are there?"]


def test_conversations_are_scored_per_turn(tmp_path, random_model_dir, capsys):
    s = Settings()
    img = scene(tmp_path / "a.png")
    req = RunRequest(media.image_media(img, s), QS[0], MethodSpec("baseline"),
                     GenerationSettings(max_new_tokens=3, warmup=0), follow_ups=QS[1:])
    said = [t.answer for t in runner.run(req, load_model(random_model_dir, s), s).turns]
    turns = [{"question": QS[0], "answer": said[0].upper(), "kind": "total"},
             {"question": QS[1], "answer": "not " + said[1], "kind": "shape_at"},
             {"question": QS[2], "answer": said[2], "kind": "count"}]
    lines = [{"image": "a.png", "turns": turns}, {"image": "a.png", "turns": turns[:2]}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert main(["eval", "--data", str(tmp_path / "c.jsonl"), "--model", random_model_dir, "--methods",
                 "aircache,sparsevila", "--keep", "1.0", "--set", "sparsevila.retrieve=1.0", "--max-new-tokens", "3",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["conversations"] and [r["method"] for r in doc["results"]] == ["baseline", "aircache", "sparsevila"]
    for r in doc["results"]:  # keep-all: every method answers every turn as the baseline does
        assert [(t["turn"], t["n"], t["accuracy"]) for t in r["turns_detail"]] == [(1, 2, 1.0), (2, 2, 0.0),
                                                                                 (3, 1, 1.0)]
        assert r["by_turn"] == {"1": 1.0, "2": 0.0, "3": 1.0} and r["by_kind"] == {"count": 1.0, "shape_at": 0.0,
                                                                                     "total": 1.0}
        assert [t["agreement"] for t in r["turns_detail"]] == [1.0] * 3 and r["accuracy"] == 3 / 5
        assert r["agreement_with_baseline"] == 1.0
    assert main(["eval", "--data", str(tmp_path / "c.jsonl"), "--model", random_model_dir, "--max-new-tokens",
                 "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:5] == ["method", "params", "turn", "1", "turn"] and "baseline" in out


def test_bad_conversation_lines(tmp_path, capsys):
    scene(tmp_path / "a.png")
    for turns, message in (([], "turns must be a list of 1..8"), ([{"question": "q"}], "needs a question and an")):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png", "turns": turns}))
        assert main(["eval", "--data", str(tmp_path / "bad.jsonl")]) == 2
        assert message in capsys.readouterr().err
