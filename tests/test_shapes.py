"""The methods on random models of LLaVA-1.5's structure (CLIP with CLS, features from layer -2, Llama) and of
LLaVA-OneVision's (SigLIP without CLS, a newline token after each image, Qwen2), driven through the CLI as a
user would: ShortV calibration from a data file, then a comparison."""

import json
from pathlib import Path

import pytest
import torch

from backends import shapes
from tests.conftest import scene
from tests.test_cli import cli

SHAPES = {"llava-1.5-tiny": 6, "onevision-tiny": 6}  # decoder layers; both have a 6x6 patch grid


@pytest.fixture(scope="module", params=list(SHAPES))
def shaped(request, tmp_path_factory):
    return request.param, str(shapes.build(request.param, tmp_path_factory.mktemp(request.param), text_scale=8))


def test_calibrate_then_compare(shaped, tmp_path):
    shape, model = shaped
    img = scene(tmp_path / "s.png")
    data = tmp_path / "cal.jsonl"
    data.write_text("\n".join(json.dumps({"image": "s.png", "question": q, "answer": "-"})
                              for q in ("how many shapes are there?", "is there a red circle?")))
    p = cli("calibrate-shortv", "--model", model, "--data", str(data))
    assert p.returncode == 0, p.stderr
    order = json.loads(Path(model, "shortv_layers.json").read_text())["layers_by_contribution"]
    assert sorted(order) == list(range(SHAPES[shape]))
    names = "baseline,random,downsample,sparsevila,fastv,feather,meteor,shortv,prumerge"
    p = cli("compare", "--image", str(img), "--prompt", "how many shapes are there?", "--model", model,
            "--methods", names, "--keep", "0.25", "--max-new-tokens", "3", "--json")
    assert p.returncode == (1 if shape == "onevision-tiny" else 0), p.stderr  # 1: a run failed (PruMerge)
    runs = {r["method"]: r for r in json.loads(p.stdout)["runs"]}
    assert runs["baseline"]["visual_tokens"]["input"] == 36
    assert all(r["ok"] for n, r in runs.items() if n != "prumerge")
    assert runs["random"]["visual_tokens"]["kept"] == 9 and runs["sparsevila"]["visual_tokens"]["kept"] == 9
    assert runs["fastv"]["visual_tokens"]["per_layer"] == [36, 36] + [9] * 4
    assert runs["feather"]["info"]["layers"] == [2, 3]  # 8 and 16 of 32 layers, scaled to 6
    assert runs["shortv"]["visual_tokens"]["per_layer"].count(0) == 4  # 19 of 32, scaled to 6
    assert len(runs["feather"]["stage_maps"]) == 2 and len(runs["fastv"]["stage_maps"]) == 1
    if shape == "onevision-tiny":  # SigLIP has no CLS token: PruMerge says so instead of pretending
        assert "needs a CLS token" in runs["prumerge"]["error"]


def test_onevision_matches_transformers_multi_image_encoding(tmp_path):
    """Base-view mode is what OneVision's own get_image_features does for each image of a multi-image input."""
    from backends import media, runner
    from backends.models import load_model
    from backends.settings import Settings
    from backends.types import GenerationSettings, MethodSpec, RunRequest

    s = Settings()
    lm = load_model(str(shapes.build("onevision-tiny", tmp_path / "ov", text_scale=8)), s)
    med = media.image_media(scene(tmp_path / "s.png"), s)
    res = runner.run(RunRequest(med, "how many shapes are there?", MethodSpec("baseline"),
                                GenerationSettings(max_new_tokens=6, warmup=0)), lm, s)
    inp = lm.adapter.preprocess(media.frames_of(med, s), "how many shapes are there?")
    ids, core = inp["input_ids"], lm.model.model
    assert int((ids == lm.adapter.image_token_id).sum()) == 36 + 1  # patches + newline
    with torch.no_grad():
        feats = core.get_image_features(pixel_values=inp["pixel_values"][:, None],
                                        image_sizes=torch.tensor([[84, 84]]),
                                        batch_num_images=torch.tensor([2])).pooler_output[0]
        is_image = (ids == lm.adapter.image_token_id)[..., None]
        emb = core.get_input_embeddings()(ids).masked_scatter(is_image, feats[None])
        out = lm.model.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                do_sample=False)
    assert res.output_ids == out[0].tolist()


def test_calibrate_needs_data_for_other_models(shaped):
    p = cli("calibrate-shortv", "--model", shaped[1])
    assert p.returncode == 2 and "--data FILE.jsonl is needed" in p.stderr
