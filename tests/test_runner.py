"""The runner: baseline equals transformers' own generate(), numbers are measured, runs are deterministic."""

from backends import media, runner
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RunRequest

S = Settings()


def _req(path, prompt="how many shapes are there?", **gen):
    return RunRequest(media.image_media(path, S), prompt, MethodSpec("baseline"), GenerationSettings(**gen))


def test_baseline_matches_hf_generate(random_model, scene_png):
    res = runner.run(_req(scene_png, max_new_tokens=8), random_model, S)
    frames = media.frames_of(_req(scene_png).media, S)
    inputs = random_model.adapter.preprocess(frames, "how many shapes are there?")
    out = random_model.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert res.output_ids == out[0, inputs["input_ids"].shape[1]:].tolist()


def test_measured_numbers_and_visual_token_accounting(random_model, scene_png):
    res = runner.run(_req(scene_png, max_new_tokens=6, repeats=2), random_model, S)
    assert res.ok and res.output_tokens == len(res.output_ids) <= 6
    t = res.timings_ms
    assert 0 < t.vision and 0 < t.prefill and 0 < t.preprocess and t.decode >= 0
    assert abs(t.ttft - (t.preprocess + t.vision + t.prefill)) < 1e-6 and t.total >= t.ttft
    tc = random_model.adapter.text_config
    head_dim = tc.hidden_size // tc.num_attention_heads
    per_token = 2 * tc.num_hidden_layers * tc.num_key_value_heads * head_dim * 4  # K and V, fp32
    prompt_len = res.info["seq_len"]
    assert res.memory.kv_cache_bytes_prefill == per_token * prompt_len
    # the last generated token is never fed back, so the cache ends one short of prompt + output
    assert res.memory.kv_cache_bytes == per_token * (prompt_len + res.output_tokens - 1)
    assert res.memory.peak_bytes >= 0 and "RSS" in res.memory.peak_kind
    assert res.visual_tokens.input == res.visual_tokens.kept == 64
    assert res.visual_tokens.per_layer == [64] * 8 and res.visual_tokens.effective == 64
    assert res.kept_map == [[[1.0] * 8 for _ in range(8)]]
    m = res.measurement
    assert m["warmup_runs"] == 1 and m["timed_runs"] == 2 and m["attn_implementation"] == "sdpa"
    assert m["versions"]["transformers"] == "5.24.0"


def test_deterministic(random_model, scene_png):
    a = runner.run(_req(scene_png, max_new_tokens=8), random_model, S)
    b = runner.run(_req(scene_png, max_new_tokens=8), random_model, S)
    assert a.output_ids == b.output_ids and a.answer == b.answer


def test_answer_depends_on_prompt(random_model, scene_png):
    a = runner.run(_req(scene_png, "how many shapes are there?", max_new_tokens=8), random_model, S)
    b = runner.run(_req(scene_png, "is there a red circle?", max_new_tokens=8), random_model, S)
    assert a.output_ids != b.output_ids
