"""The two-encoder built-in model (builtin-2enc): loading through the Auto classes, the adapter's multi-encoder
seams, the picker, and the method matrix on it (every method runs at keep-all and reproduces the baseline, or
refuses with the one-encoder message). A random-weight model built from the built-in config: no trained weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from backends import media, runner
from backends.settings import Settings
from backends.types import GenerationSettings, MethodSpec, RequestError, RunRequest
from methods import registry
from tests.test_methods import hooks

S = Settings()
N = 100  # 8x8 CLIP patches + 6x6 conv cells
# Methods that read one encoder's grid or tower (pooling, neighbours, CLS attention, a uniform grid, per-layer maps)
REFUSE = {"downsample", "dynamic_vlm", "folder", "prumerge", "prumerge_plus", "sparsevila", "feather", "aircache"}


@pytest.fixture(scope="session")
def two_enc_dir(tmp_path_factory) -> str:
    from backends import calibrate
    from backends.models import load_model
    from backends.tiny import two_encoder as te
    from backends.tiny.arch import build_model, build_processor, build_tokenizer
    try:  # twig and hybrid beside the model for TwigVLM and MaTVLM (the fixture that writes them may be absent)
        from tests.conftest import _extras
    except ImportError:
        _extras = None

    tok = build_tokenizer()
    base = build_model(tok, seed=0)
    with torch.no_grad():  # larger LM weights: varied greedy tokens (as conftest's random model)
        for p in base.model.language_model.parameters():
            if p.ndim == 2:
                p.mul_(8)
    model = te.from_base(base, seed=0)
    proc = te.two_encoder_processor(build_processor(tok), model.config)
    images = [im for im, _ in calibrate._generated(4)]
    model.config.encoder_ranks = te.measure_ranks(model, proc.image_processor(images, return_tensors="pt")
                                                  ["pixel_values"])
    d = tmp_path_factory.mktemp("random-two-encoder")
    model.save_pretrained(d)
    proc.save_pretrained(d)
    if _extras is not None:
        _extras(model, d)
    calibrate.write_calibration(load_model(str(d), S), calibrate._generated(2), str(d), "2 generated scenes (test)")
    return str(d)


@pytest.fixture(scope="session")
def two_enc(two_enc_dir):
    from backends.models import load_model

    return load_model(two_enc_dir, S)


def run(lm, path, name, params=None, prompt="how many shapes are there?", tokens=8):
    req = RunRequest(media.image_media(path, S), prompt, MethodSpec(name, params or {}),
                     GenerationSettings(max_new_tokens=tokens, warmup=0))
    return runner.run(req, lm, S)


@pytest.fixture(scope="module")
def baseline2(two_enc, scene_png):
    return run(two_enc, scene_png, "baseline")


def test_loads_through_auto_classes_with_both_encoders(two_enc_dir, two_enc, scene_png, baseline2):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(two_enc_dir).model_type == "llava_2enc"
    assert type(two_enc.model).__name__ == "TwoEncoderForConditionalGeneration"
    ad = two_enc.adapter
    assert [(e.name, e.grid, e.offset) for e in ad.encoders] == [("clip", (8, 8), 0), ("conv", (6, 6), 64)]
    frame = media.frames_of(media.image_media(scene_png, S), S)[0]
    inputs = ad.preprocess([frame], "how many shapes are there?")
    assert int((inputs["input_ids"] == ad.image_token_id).sum()) == N
    # the runner's spliced sequence (each encoder's projector by slot) gives generate()'s tokens
    out = two_enc.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == baseline2.output_ids
    assert baseline2.visual_tokens.input == N and baseline2.visual_tokens.per_layer == [N] * 8
    assert len(baseline2.kept_map[0]) == 24 and all(v == 1.0 for row in baseline2.kept_map[0] for v in row)


def test_from_base_keeps_the_base_weights(two_enc):
    from backends.tiny.arch import build_model, build_tokenizer
    from backends.tiny.two_encoder import from_base

    base = build_model(build_tokenizer(), seed=3)
    two = from_base(base)
    sd = two.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in base.state_dict().items())
    assert {k.split(".")[1] for k in sd if k not in base.state_dict()} == {"conv_tower", "conv_projector"}


def test_project_tokens_routes_each_slot_to_its_encoder(two_enc):
    ad = two_enc.adapter
    h = torch.randn(4, 128)
    idx = torch.tensor([0, 63, 64, 99])
    with torch.no_grad():
        out = ad.project_tokens(h, idx)
        assert torch.equal(out[:2], ad.projector(h[:2])) and torch.equal(out[2:], ad.conv_projector(h[2:]))


def test_map_rows_averages_the_encoders_on_a_common_grid(two_enc):
    shares = torch.cat([torch.ones(64), torch.zeros(36)])
    shares[0] = 0.0  # CLIP's top-left patch: the top-left 3x3 cells of 24x24
    rows = two_enc.adapter.map_rows(shares)
    assert len(rows) == 24 and len(rows[0]) == 24
    assert rows[0][:4] == [0.0, 0.0, 0.0, 0.5] and rows[3][0] == 0.5 and rows[23][23] == 0.5


def test_picker_offers_builtin_2enc_only_with_weights(monkeypatch, tmp_path, two_enc_dir, scene_png):
    from backends import settings as st
    from backends.models import ModelLoadError, load_model
    from ui.request import build_comparison, upload_folder

    catalog = {m["name"]: m for m in registry.catalog()}
    folder = upload_folder() / "test-two-encoder"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(scene_png, folder / "scene.png")
    image = {"path": str(folder / "scene.png"), "orig_name": "scene.png"}

    def ask():  # the page's and the API's request builder (the picker lists Settings.models())
        return build_comparison(Settings(), catalog, image=image, prompt="how many shapes are there?",
                                methods=["meteor"], model=st.BUILTIN_2ENC)

    monkeypatch.setitem(st.BUILTIN_DIRS, st.BUILTIN_2ENC, tmp_path / "absent")
    assert st.BUILTIN_2ENC not in Settings().models()
    with pytest.raises(RequestError, match="model 'builtin-2enc' is not offered here; choose one of: builtin"):
        ask()
    with pytest.raises(ModelLoadError, match="two-encoder built-in model is not trained yet.*train_2enc"):
        load_model(st.BUILTIN_2ENC, S)  # the CLI's --model builtin-2enc
    shutil.copytree(two_enc_dir, tmp_path / "present")
    monkeypatch.setitem(st.BUILTIN_DIRS, st.BUILTIN_2ENC, tmp_path / "present")
    assert Settings().models()[:2] == ["builtin", "builtin-2enc"]
    assert ask().model == st.BUILTIN_2ENC
    assert load_model(st.BUILTIN_2ENC, S).adapter.tokens_per_image == N


@pytest.mark.parametrize("name", registry.names())
def test_every_method_keeps_all_or_refuses(name, two_enc, scene_png, baseline2):
    before = hooks(two_enc.model)
    if name in REFUSE:
        with pytest.raises(RequestError, match=r"this method .*, but this model feeds the LLM 2 vision encoders' "
                                               r"tokens \(clip 8x8 \+ conv 6x6\); it runs on one-encoder models only"):
            run(two_enc, scene_png, name, registry.get(name).keep_all_params())
    else:
        res = run(two_enc, scene_png, name, registry.get(name).keep_all_params())
        assert res.ok and res.output_ids == baseline2.output_ids
        assert res.visual_tokens.kept == N and res.visual_tokens.per_layer == [N] * 8
        assert res.kept_map == baseline2.kept_map
    assert hooks(two_enc.model) == before


@pytest.mark.parametrize("name", sorted(set(registry.names()) - REFUSE - {"baseline"}))
def test_working_methods_prune_both_encoders_deterministically(name, two_enc, scene_png, baseline2):
    cls = registry.get(name)
    params = {cls.budget_field: 0.25} if cls.budget_field else {}
    a = run(two_enc, scene_png, name, params)
    b = run(two_enc, scene_png, name, params)
    assert a.ok, a.error
    assert a.output_ids == b.output_ids and a.kept_map == b.kept_map and a.visual_tokens.input == N
    if name == "random":
        assert a.visual_tokens.kept == 25  # round(0.25 x 100) over both encoders' tokens
    assert run(two_enc, scene_png, "baseline").output_ids == baseline2.output_ids
