"""SparseVILA's decode-time retrieval: each turn's question selects its own visual KV from the store."""

import pytest

from backends import media, runner
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RequestError, RunRequest
from methods import registry
from tests.conftest import scene

S = Settings()
N, L = 64, 8


def run(lm, path, params, prompt, ups):
    req = RunRequest(media.image_media(path, S), prompt, MethodSpec("sparsevila", params),
                     GenerationSettings(max_new_tokens=4, warmup=0), follow_ups=ups)
    return runner.run(req, lm, S)


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory):
    """A red circle at the top left, a green triangle at the bottom right: the turns ask about each."""
    return str(scene(tmp_path_factory.mktemp("two") / "two.png",
                     cells=((0, 0, "red", "circle"), (2, 2, "green", "triangle"))))


def test_each_turn_retrieves_for_its_own_question(random_model, two_objects):
    res = run(random_model, two_objects, {"keep": 1.0, "retrieve": 0.25}, "what shape is at the top left?",
              ["what color is the shape at the bottom right?", "how many green shapes are there?"])
    assert res.ok, res.error
    n = round(0.25 * N)
    maps = [[v for row in t.kept_map[0] for v in row] for t in res.turns]
    for t, m in zip(res.turns, maps):
        assert t.visual_tokens.per_layer == [n] * L and t.visual_tokens.kept == N
        assert sum(m) == pytest.approx(n)  # each layer reads n visual entries: the shares add up to n
    assert maps[1] != maps[0] and maps[2] != maps[1], "a new question must be free to retrieve other tokens"
    assert res.kept_map == res.turns[0].kept_map and res.stage_maps[0] == [[[1.0] * 8] * 8]  # prefill kept all
    # the decoder's cache holds n visual entries per layer at every turn: the store is put back, then reselected
    per_tok = 2 * random_model.adapter.text_config.num_key_value_heads * random_model.adapter.head_dim * 4 * L
    full = run(random_model, two_objects, {"keep": 1.0, "retrieve": 1.0}, "what shape is at the top left?",
               ["what color is the shape at the bottom right?", "how many green shapes are there?"])
    for t, f in zip(res.turns, full.turns):
        assert t.memory.kv_cache_bytes_prefill == f.memory.kv_cache_bytes_prefill - (N - n) * per_tok
    assert res.info["store_bytes"] == N * per_tok


def test_retrieval_stays_within_the_prefill_budget(random_model, two_objects):
    res = run(random_model, two_objects, {"keep": 0.25, "retrieve": 0.5}, "what shape is at the top left?", [])
    assert res.visual_tokens.kept == 16 and res.visual_tokens.per_layer == [16] * L  # capped at what was kept


def test_retrieve_is_checked():
    with pytest.raises(RequestError, match="retrieve must be in"):
        registry.build(MethodSpec("sparsevila", {"retrieve": 0}))
    assert registry.get("sparsevila").keep_all_params() == {"keep": 1.0, "retrieve": 1.0}
