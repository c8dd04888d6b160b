"""Conversations: follow-up turns on each run's own KV cache (backends/turns.py).

The cache is carried correctly when a follow-up gives the same tokens as one fresh prompt holding the whole
dialogue; at keep-all every method reproduces the baseline on every turn; turn 1 mirrors the top level."""

import copy
import json

import pytest
import torch
from transformers import DynamicCache

from backends import media, runner, turns
from backends.settings import Settings
from backends.state import RunState
from backends.types import (
    GenerationSettings,
    Media,
    MethodSpec,
    RequestError,
    RunRequest,
    RunResult,
    from_json,
    to_json,
)
from methods import registry

S = Settings()
Q1, UPS = "how many shapes are there?", ["what shape is at the top left?", "how many red shapes are there?"]


def run(lm, path, name, params=None, ups=UPS, tokens=6):
    req = RunRequest(media.image_media(path, S), Q1, MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=tokens, warmup=0), follow_ups=list(ups))
    return runner.run(req, lm, S)


@pytest.fixture(scope="module")
def baseline(random_model, scene_png):
    return run(random_model, scene_png, "baseline")


def fresh(lm, frames, ids: list[int], max_new: int) -> list[int]:
    """Greedy tokens after one fresh prefill of `ids` (image placeholders included), no cache carried."""
    ad = lm.adapter
    pv = ad.preprocess(frames, Q1)["pixel_values"]
    state = RunState(ad, torch.tensor([ids]), pv, Q1)
    with torch.inference_mode():
        state.encode_vision()
        embeds, pos = runner.build_sequence(state)
        cache = DynamicCache(config=ad.text_config)
        out = ad.language_model(inputs_embeds=embeds, position_ids=pos, cache=cache, use_cache=True)
        first = int(ad.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
        return turns.greedy(ad, cache, first, state.next_position, max_new, {2}, lm.device)[0]


def test_follow_up_equals_one_long_prompt(random_model, scene_png, baseline):
    lm, tok = random_model, random_model.processor.tokenizer
    frames = media.frames_of(media.image_media(scene_png, S), S)
    stream = lm.adapter.preprocess(frames, Q1)["input_ids"][0].tolist()
    prompts, answers = [Q1], []
    assert len(baseline.turns) == 3
    for k, turn in enumerate(baseline.turns):
        if k:  # what turn k + 1 feeds: the last token of turn k, EOS if it was cut, then the template's text
            text = turns.increment_text(lm.processor, prompts, answers, 1)
            stream += turns.new_ids(tok, text, baseline.turns[k - 1].output_ids[-1], tok.eos_token_id)
            assert fresh(lm, frames, stream, 6) == turn.output_ids, f"turn {k + 1}"
        stream += turn.output_ids[:-1]  # fed while decoding (the last one is fed by the next turn)
        answers.append(turn.answer)
        prompts.append(UPS[k] if k < len(UPS) else "")


def test_turn_one_mirrors_the_top_level_and_json_round_trips(baseline):
    t1 = baseline.turns[0]
    assert [t.prompt for t in baseline.turns] == [Q1, *UPS]
    assert (t1.answer, t1.output_ids, t1.kept_map) == (baseline.answer, baseline.output_ids, baseline.kept_map)
    assert t1.visual_tokens == baseline.visual_tokens and t1.timings_ms == baseline.timings_ms
    assert t1.memory.kv_cache_bytes == baseline.memory.kv_cache_bytes
    for a, b in zip(baseline.turns, baseline.turns[1:]):  # each turn adds to the cache the previous one left
        assert b.memory.kv_cache_bytes_prefill > a.memory.kv_cache_bytes
        assert b.timings_ms.vision == 0 and b.timings_ms.prefill > 0
    back = from_json(RunResult, to_json(baseline))
    assert back == baseline and json.loads(to_json(baseline))["turns"][2]["prompt"] == UPS[1]
    req = RunRequest(Media("image", ["AA=="]), Q1, MethodSpec("baseline"), follow_ups=UPS)  # as Redis carries it
    assert from_json(RunRequest, to_json(req)).follow_ups == UPS


@pytest.mark.parametrize("name", registry.names())
def test_keep_all_reproduces_the_baseline_on_every_turn(name, random_model, scene_png, baseline):
    res = run(random_model, scene_png, name, registry.get(name).keep_all_params())
    assert res.ok and [t.output_ids for t in res.turns] == [t.output_ids for t in baseline.turns]


@pytest.mark.parametrize("name,params", [("fastv", {"keep": 0.25}), ("feather", {"keep": 0.25}),
                                         ("aircache", {"keep": 0.1}), ("sparsevila", {"keep": 0.5})])
def test_follow_ups_run_on_uneven_per_layer_caches(name, params, random_model, scene_png):
    res = run(random_model, scene_png, name, params)
    assert res.ok, res.error
    assert len(res.turns) == 3 and all(1 <= len(t.output_ids) <= 6 for t in res.turns)


def test_a_template_that_renders_assistant_turns(random_model):
    """The increment is the template's own growth, so a template with assistant turns (as v2's) gives
    exactly the tokens of the whole dialogue rendered at once."""
    proc = copy.deepcopy(random_model.processor)
    proc.chat_template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
                          "{% elif m['role'] == 'user' %}{{ c['text'] }} {% else %}answer : {{ c['text'] }} </s> "
                          "{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}answer :{% endif %}")
    text = turns.increment_text(proc, [Q1, UPS[0]], ["two"], 1)
    assert text == f"{UPS[0]} answer :"
    tok = proc.tokenizer
    first = tok(proc.apply_chat_template(turns.dialogue([Q1], [], 1), add_generation_prompt=True))["input_ids"]
    two = tok("two", add_special_tokens=False)["input_ids"]
    stream = first + two + turns.new_ids(tok, text, tok.eos_token_id, tok.eos_token_id)
    whole = proc.apply_chat_template(turns.dialogue([Q1, UPS[0]], ["two"], 1), add_generation_prompt=True)
    assert stream == tok(whole)["input_ids"]


def test_bad_conversations_get_one_message(random_model, scene_png):
    with pytest.raises(RequestError, match=r"^follow-up question 2 \(turn 3\) is empty"):
        run(random_model, scene_png, "baseline", ups=["what shape is at the top left?", "  "])
    with pytest.raises(RequestError, match=r"^the conversation has 9 turns; the limit is 8"):
        run(random_model, scene_png, "baseline", ups=["how many shapes are there?"] * 8)
    with pytest.raises(RequestError, match=r"positions .* the model's context is 2048"):
        run(random_model, scene_png, "baseline", ups=UPS * 2, tokens=512)


def test_cli_follow_ups(random_model_dir, scene_png, capsys):
    from app import main

    base = ["compare", "--image", scene_png, "--prompt", Q1, "--model", random_model_dir, "--warmup", "0",
            "--repeats", "1"]
    assert main([*base, "--follow-up", UPS[0], "--follow-up", UPS[1], "--methods", "baseline,aircache",
                 "--max-new-tokens", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [[t["prompt"] for t in r["turns"]] for r in doc["runs"]] == [[Q1, *UPS]] * 2
    for extra, message in ((["--follow-up", " "], "follow-up question 1 (turn 2) is empty"),
                           (["--follow-up", "q"] * 8, "the conversation has 9 turns; the limit is 8"),
                           ([*(["--follow-up", "q"] * 3), "--max-new-tokens", "512"],
                            "positions (4 turn(s) of up to 512 new tokens")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
