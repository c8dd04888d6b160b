"""The CLI as a user runs it: the JSON document, and one clear line + exit 2 for each bad input."""

import json
import os
import subprocess
import sys

import pytest

from app import main
from tests.conftest import scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=300)


def test_compare_json_document(random_model_dir, scene_png):
    p = cli("compare", "--image", scene_png, "--prompt", "How many shapes are there?", "--model", random_model_dir,
            "--max-new-tokens", "5", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc["model"]) >= {"name", "device", "dtype", "attn_implementation"}
    assert doc["model"]["device"] == "cpu" and doc["model"]["attn_implementation"] == "sdpa"
    assert doc["input"] == {"kind": "image", "frames": 1, "name": "scene.png", "visual_tokens": 64}
    (run,) = doc["runs"]
    keys = {"method", "params", "ok", "error", "answer", "visual_tokens", "timings_ms", "memory", "kept_map"}
    assert keys <= set(run)
    assert run["ok"] and run["error"] is None and run["method"] == "baseline"
    assert set(run["timings_ms"]) >= {"vision", "prefill", "decode", "per_token", "total"}
    assert run["timings_ms"]["total"] > 0 and run["memory"]["kv_cache_bytes"] > 0
    again = json.loads(cli("compare", "--image", scene_png, "--prompt", "How many shapes are there?", "--model",
                           random_model_dir, "--max-new-tokens", "5", "--json").stdout)
    assert again["runs"][0]["answer"] == run["answer"] and again["runs"][0]["output_ids"] == run["output_ids"]


def test_video_compare(random_model_dir, tmp_path):
    from tests.test_video import write_video

    p = cli("compare", "--video", str(write_video(tmp_path / "c.avi")), "--frames", "3", "--prompt", "how many?",
            "--model", random_model_dir, "--max-new-tokens", "2", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["input"]["kind"] == "video" and doc["input"]["frames"] == 3 and doc["input"]["visual_tokens"] == 192
    assert len(doc["runs"][0]["kept_map"]) == 3


def test_bad_input_subprocess_exit_2(tmp_path):
    p = cli("compare", "--image", str(tmp_path / "missing.png"), "--prompt", "q")
    assert p.returncode == 2 and p.stderr.strip() == "error: file not found: missing.png"


def _bad(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    big = scene(tmp_path / "big.png", size=400)
    return [
        (["--image", str(corrupt), "--prompt", "q"], "not a readable image", {}),
        (["--image", str(big), "--prompt", "q"], "400x400 pixels; the limit is 10,000 pixels",
         {"VLM_MAX_IMAGE_PIXELS": "10000"}),
        (["--image", str(big), "--prompt", "q"], "the limit is 0.001 MB", {"VLM_MAX_UPLOAD_MB": "0.001"}),
        (["--image", "{img}", "--prompt", "   "], "the prompt is empty", {}),
        (["--image", "{img}", "--prompt", "x" * 30], "the prompt has 30 characters; the limit is 20",
         {"VLM_MAX_PROMPT_CHARS": "20"}),
        (["--image", "{img}", "--prompt", "q", "--methods", "baseline,nosuch"], "unknown method 'nosuch'", {}),
        (["--image", "{img}", "--prompt", "q", "--set", "baseline.alpha=2"], "unknown parameter(s) ['alpha']", {}),
        (["--image", "{img}", "--prompt", "q", "--set", "baseline"], "--set expects METHOD.PARAM=VALUE", {}),
        (["--image", "{img}", "--prompt", "q", "--keep", "0"], "--keep must be in (0, 1], got 0.0", {}),
        (["--image", "{img}", "--prompt", "q", "--keep", "1.5"], "--keep must be in (0, 1], got 1.5", {}),
        (["--image", "{img}", "--prompt", "q", "--keep", "half"], "invalid float value: 'half'", {}),
        (["--image", "{img}"], "the following arguments are required: --prompt", {}),
        (["--video", str(corrupt), "--prompt", "q"], "not a readable video", {}),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_input_in_process(case, tmp_path, scene_png, capsys, monkeypatch):
    args, words, env = _bad(tmp_path)[case]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = [a.replace("{img}", scene_png) for a in args]
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err


def test_compare_pre_llm_methods_at_a_budget(random_model_dir, scene_png):
    names = "baseline,random,downsample,prumerge,prumerge_plus,folder,sparsevila,dynamic_vlm"
    p = cli("compare", "--image", scene_png, "--prompt", "how many shapes are there?", "--model", random_model_dir,
            "--methods", names, "--keep", "0.25", "--set", "random.seed=3", "--max-new-tokens", "3", "--json")
    assert p.returncode == 0, p.stderr
    runs = {r["method"]: r for r in json.loads(p.stdout)["runs"]}
    assert list(runs) == names.split(",") and all(r["ok"] for r in runs.values())
    assert runs["random"]["params"] == {"keep": 0.25, "seed": 3, "positions": "reindex"}
    assert runs["sparsevila"]["params"] == {"keep": 0.25, "retrieve": 0.25}  # --keep overrides the default 0.4
    for name in ("random", "downsample", "folder", "sparsevila", "dynamic_vlm"):
        assert runs[name]["visual_tokens"]["kept"] == 16
        shares = [v for row in runs[name]["kept_map"][0] for v in row]
        assert min(shares) < 1.0 and abs(sum(shares) - 16) < 1e-4  # each kept token carries one patch of weight


def test_table_prints_whole_answers():
    from backends.cli import _table

    long = "a red circle at the top left, a blue square at the center and a green triangle at the bottom right"
    run = {"method": "baseline", "ok": True, "answer": long, "visual_tokens": {"kept": 64, "input": 64},
           "timings_ms": {"ttft": 1.0, "total": 2.0}, "memory": {"peak_bytes": 2**20}}
    out = _table({"runs": [run]})
    assert out.splitlines()[1].endswith("  " + long)
