"""`app.py eval`: accuracy by normalised exact match, per kind, agreement with the baseline, bad data."""

import json

from app import main
from backends.evaluate import normalize
from tests.conftest import scene


def test_normalize():
    assert normalize(" Two. ") == "two" == normalize("TWO!") and normalize("top-left") == "top left"


def _data(tmp_path, answers):
    scene(tmp_path / "a.png")
    scene(tmp_path / "b.png", cells=((1, 1, "green", "triangle"),))
    lines = [{"image": "a.png", "question": "how many shapes are there?", "answer": answers[0], "kind": "total"},
             {"image": "b.png", "question": "how many shapes are there?", "answer": answers[1], "kind": "count"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    return str(path)


def test_eval_scores_against_the_models_own_answers(tmp_path, random_model_dir, capsys):
    # first pass learns the baseline's answers, second pass labels item 0 with it (decorated) and item 1 wrongly
    path = _data(tmp_path, ["x", "y"])
    assert main(["eval", "--data", path, "--model", random_model_dir, "--max-new-tokens", "3", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n"] == 2 and first["results"][0]["accuracy"] == 0.0
    from backends import media, runner
    from backends.models import load_model
    from backends.settings import Settings
    from backends.types import GenerationSettings, MethodSpec, RunRequest

    s = Settings()
    req = RunRequest(media.image_media(tmp_path / "a.png", s), "how many shapes are there?", MethodSpec("baseline"),
                     GenerationSettings(max_new_tokens=3, warmup=0))
    answer = runner.run(req, load_model(random_model_dir, s), s).answer
    path = _data(tmp_path, [f"  {answer.upper()}?", "definitely not this"])
    assert main(["eval", "--data", path, "--model", random_model_dir, "--methods", "random,baseline", "--keep", "1.0",
                 "--max-new-tokens", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    base, rnd = doc["results"]
    assert base["method"] == "baseline" and base["accuracy"] == 0.5 and base["by_kind"] == {"count": 0.0, "total": 1.0}
    assert base["agreement_with_baseline"] == 1.0 and base["mean_latency_ms"] > 0
    assert rnd["method"] == "random" and rnd["agreement_with_baseline"] == 1.0  # keep 1.0 equals the baseline


def test_eval_bad_data(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    assert main(["eval", "--data", str(tmp_path / "bad.jsonl")]) == 2
    assert "line 1: needs image (or video), question and answer" in capsys.readouterr().err


def test_answer_f1_scores_descriptions_by_object():
    from backends.evaluate import answer_f1

    ref = ("a red circle at the top left, a blue square at the center, a green triangle at the middle right "
           "and a yellow circle at the bottom right")
    assert answer_f1(ref.upper() + ".", ref) == 1.0
    three = "a red circle at the top left, a blue square at the center and a green triangle at the middle right"
    assert answer_f1(three, ref) == 2 * 3 / (3 + 4)  # one object missed: 0.857, not 0
    assert answer_f1("a red square at the top left", "a red circle at the top left") == 0.0
    assert answer_f1("Two.", "two") == 1.0 and answer_f1("three", "two") == 0.0  # one-word answers: exact match
