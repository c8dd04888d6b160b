"""Follow-up questions through the page's compare endpoint (gradio_client, a real `python app.py`)."""

from __future__ import annotations

import pytest

from tests.test_serve import running_app
from tests.test_ui_api import IMAGE, compare

UPS = ["what shape is at the top left?", "how many red shapes are there?"]


@pytest.fixture(scope="module")
def client(random_model_dir):
    from gradio_client import Client

    with running_app(random_model_dir) as url:
        yield Client(url, verbose=False)


@pytest.mark.parametrize("follow_ups", [UPS, "\n".join([UPS[0], "", UPS[1], ""])])  # API list, or the page's box
def test_every_run_answers_every_turn(client, follow_ups):
    _, cards, _, _, doc = compare(client, image=IMAGE, methods=["aircache", "sparsevila"], follow_ups=follow_ups,
                                  repeats=1, repeat_budget_s=0).result()
    assert [r["method"] for r in doc["runs"]] == ["baseline", "aircache", "sparsevila"]
    for r in doc["runs"]:
        assert r["ok"], r["error"]
        assert [t["prompt"] for t in r["turns"]] == ["how many shapes are there?", *UPS]
        assert r["turns"][0]["output_ids"] == r["output_ids"] and r["turns"][0]["answer"] == r["answer"]
    for k, q in enumerate(UPS, 2):
        assert cards.count(f"turn {k}: {q}") == 3  # one line per card


@pytest.mark.parametrize("follow_ups,message", [
    (["what shape is at the top left?", ""], r"follow-up question 2 \(turn 3\) is empty"),
    (["how many shapes are there?"] * 8, "the conversation has 9 turns; the limit is 8"),
    ("what is it?\n<image>", "the prompt contains <image>"),
])
def test_bad_conversations_get_their_message(client, follow_ups, message):
    with pytest.raises(Exception, match=message):
        compare(client, image=IMAGE, follow_ups=follow_ups).result()


def test_a_conversation_past_the_context_is_refused_in_every_card(client):
    _, cards, _, _, doc = compare(client, image=IMAGE, follow_ups=UPS * 2, max_new_tokens=512).result()
    (run,) = doc["runs"]
    assert not run["ok"] and "the model's context is 2048" in run["error"] and "context is 2048" in cards
