"""The page's compare endpoint, driven through gradio_client as a user's program would.

A real `python app.py` (tiny random LLaVA, the real method registry) streams one update per run; bad
input comes back as a message; a run that fails leaves the others' results; a pool that fails says so.
The methods under test are the registry's first four (padded with baseline repeats), so the tests grow
with the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_serve import ROOT, running_app

EXAMPLES = os.path.join(ROOT, "assets", "examples")
IMAGE = os.path.join(EXAMPLES, "three_shapes.png")
VIDEO = os.path.join(EXAMPLES, "moving.webm")


def four_methods() -> list[str]:
    from methods import registry

    names = registry.names()[:4]
    return names + ["baseline"] * (4 - len(names))


@pytest.fixture(scope="module")
def client(random_model_dir, tmp_path_factory):
    from gradio_client import Client

    # small limits so the limit checks run on tiny files; saved comparisons go to this test's own SQLite file
    store = str(tmp_path_factory.mktemp("store") / "saved.sqlite3")
    with running_app(random_model_dir, VLM_MAX_UPLOAD_MB="1", VLM_MAX_VIDEO_SECONDS="3", VLM_STORE=store) as url:
        yield Client(url, verbose=False)


def compare(client, **kw):
    from gradio_client import handle_file

    for key in ("image", "video"):
        if isinstance(kw.get(key), str):
            kw[key] = handle_file(kw[key])
    kw.setdefault("prompt", "how many shapes are there?")
    kw.setdefault("max_new_tokens", 3)
    return client.submit(**kw, api_name="/compare")


def test_api_parameter_names(client):
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["image", "video", "prompt", "methods", "keep", "params",
                                                     "max_new_tokens", "model", "frames", "warmup", "repeats",
                                                     "repeat_budget_s", "follow_ups"]


def test_streams_one_update_per_run(client):
    names = four_methods()
    job = compare(client, image=IMAGE, methods=names[1:] if names[0] == "baseline" else names)
    updates = list(job)  # every yield of the handler, in order
    banners = [u[0] for u in updates]
    for k in range(1, 5):
        assert any(f"<b>{k} of 4 runs finished" in b for b in banners), f"no update after run {k}: {banners}"
    assert len(updates) >= 4 + 1
    banner, cards, summary, download, doc = job.result()
    assert [r["method"] for r in doc["runs"]] == names and all(r["ok"] for r in doc["runs"]), doc["runs"]
    assert cards.count('data-state="done"') == 4 and cards.count("data:image/png;base64,") >= 4
    assert summary.count("<tr") == 5 and "How these numbers were measured" in summary
    for r in doc["runs"]:  # at least 3 timed runs by default, each reported; more only while noisy
        assert 3 <= r["measurement"]["timed_runs"] == len(r["timings_ms_all"]) <= 20 and r["timings_ms"]["total"] > 0
        assert 0 < r["confidence"]["min"] <= r["confidence"]["mean"] <= 1 and r["flop_ideal_speedup"] > 0
    assert doc["runs"][0]["flop_ideal_speedup"] == 1.0
    assert doc["generation"] == {"max_new_tokens": 3, "warmup": 1, "repeats": 3, "repeat_budget_s": 2.0,
                                 "decoding": "greedy", "batch_size": 1}
    assert "median (min–max) of" in cards and "FLOP-ideal (computed)" in cards
    with open(download) as f:
        assert json.load(f) == doc
    assert doc["saved"]["link"] == f"/?id={doc['saved']['id']}"  # stored: the page's permalink reopens it


def test_the_baselines_own_work_is_coloured_only_by_the_rule_its_own_timings_give(client):
    """`random` at keep 1.0 does the baseline's work: identical tokens, every timing on its card carries its
    min-max, and its speedup is coloured exactly as the rule (fmt.verdict, unit-tested in test_ui_render) says for
    the timings the document reports: so the colour on the page is never decided by anything but the numbers
    shown. How often keep-all is coloured on a loaded machine is a measurement, not a test: bench/keepall_drift.py."""
    from backends.types import RunResult, from_dict
    from ui import fmt

    for _ in range(3):
        job = compare(client, image=IMAGE, methods=["random"], params={"random": {"keep": 1.0}})
        _, cards, _, _, doc = job.result()
        card = cards[cards.index('data-method="random"'):]
        base, run = (from_dict(RunResult, r) for r in doc["runs"])
        assert run.output_ids == base.output_ids
        want = fmt.verdict(run, base)
        assert want in ("same", "faster", "slower")
        assert ("vc-good" in card) == (want == "faster") and ("vc-bad" in card) == (want == "slower")
        assert ("about the same" in card) == (want == "same")
        assert card.count("ms (") >= 2  # total and TTFT: "12 ms (11–14 ms)"


def test_sweep_returns_points_and_plots(client):
    from gradio_client import handle_file

    job = client.submit(image=handle_file(IMAGE), prompt="how many shapes are there?", methods=["random"],
                        keeps="1.0, 0.25", max_new_tokens=3, repeats=1, repeat_budget_s=0, api_name="/sweep")
    updates = list(job)
    status, latency, agreement, points, doc = job.result()
    assert len(updates) >= 3 and "3 of 3 sweep runs finished" in status
    rows = [dict(zip(points["headers"], row)) for row in points["data"]]
    assert [(r["method"], r["keep"]) for r in rows] == [("baseline", 1.0), ("random", 1.0), ("random", 0.25)]
    assert rows[0]["agreement"] == rows[1]["agreement"] == 1.0  # keep-all reproduces the baseline exactly
    assert rows[1]["answer"] == rows[0]["answer"] and rows[2]["flop_ideal_speedup"] > 1.0
    for plot, y in ((latency, "total_ms"), (agreement, "agreement")):
        data = plot.get("value", plot)  # an update (the title carries the progress) or the plot's data alone
        assert data["mark"] == "line" and {"keep", y} <= set(data["columns"])  # gradio's native line plot
        drawn = [dict(zip(data["columns"], row)) for row in data["data"]]
        base = [(d["keep"], d[y]) for d in drawn if d["method"] == "baseline"]  # a flat reference line
        assert len(drawn) == 4 and sorted(k for k, _ in base) == [0.25, 1.0] and base[0][1] == base[1][1]
    assert [r["params"].get("keep") for r in doc["runs"][1:]] == [1.0, 0.25]
    with pytest.raises(Exception, match=r"every keep must be in \(0, 1\], got 1.5"):
        client.submit(image=handle_file(IMAGE), methods=["random"], keeps="1.5", api_name="/sweep").result()


def test_failing_method_leaves_the_others(client):
    names = four_methods()
    bad = names[3]
    occurrence = names.count(bad)  # params key "name#k" names one run of a repeated method
    job = compare(client, image=IMAGE, methods=names, params=json.dumps({f"{bad}#{occurrence}": {"no_such": 1}}))
    *_, cards, _, _, doc = job.result()
    oks = [r["ok"] for r in doc["runs"]]
    assert oks == [True, True, True, False], doc["runs"]
    assert "no_such" in doc["runs"][3]["error"]
    assert cards.count('data-state="failed"') == 1 and cards.count('data-state="done"') == 3
    assert "Run failed." in cards and "no_such" in cards


def test_sweep_on_labelled_data(client):
    job = client.submit(data="heldout.jsonl", methods=["random"], keeps="1.0, 0.25", lines=3, max_new_tokens=3,
                        api_name="/sweep_labelled")
    updates = list(job)
    status, by_keep, by_latency, table = job.result()
    assert len(updates) == 3 and "3 of 3 lines" in status  # one update per line
    rows = {(r[0], r[1]): dict(zip(table["headers"], r)) for r in table["data"]}
    assert set(rows) == {("baseline", 1.0), ("random", 1.0), ("random", 0.25)}
    assert all(r["lines"] == 3 and 0 <= r["accuracy"] <= 1 and r["mean_latency_ms"] > 0 for r in rows.values())
    assert rows["random", 1.0]["accuracy"] == rows["baseline", 1.0]["accuracy"]  # keep-all: the baseline's answers
    for plot, x in ((by_keep, "keep"), (by_latency, "mean_latency_ms")):
        data = plot.get("value", plot)
        assert data["mark"] == "line" and {x, "accuracy"} <= set(data["columns"])
    with pytest.raises(Exception, match="unknown data file '../secret.jsonl'"):
        client.submit(data="../secret.jsonl", methods=["random"], api_name="/sweep_labelled").result()


def test_out_of_range_parameters_are_refused_not_clamped(client):
    for params, message in (({"random": {"keep": 1.5}}, r"random: keep must be in \(0, 1\]"),
                            ({"random": {"keep": 0}}, r"random: keep must be in \(0, 1\]")):
        with pytest.raises(Exception, match=message):  # checked before anything runs
            compare(client, image=IMAGE, methods=["random"], params=params).result()
    doc = compare(client, image=IMAGE, methods=["shortv"], params={"shortv": {"n_frozen": 99}}).result()[4]
    assert not doc["runs"][1]["ok"] and "n_frozen 99 is more than this model's 8 layers" in doc["runs"][1]["error"]


def test_video_is_sampled_and_mapped_per_frame(client):
    _, cards, _, _, doc = compare(client, video=VIDEO, frames=4).result()
    assert doc["input"]["kind"] == "video" and doc["input"]["frames"] == 4
    run = doc["runs"][0]
    assert run["ok"] and len(run["kept_map"]) == 4 and run["visual_tokens"]["input"] == 4 * 64
    assert cards.count("data:image/png;base64,") == 4


def _write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _video(path, seconds: float) -> str:
    import cv2

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (32, 32))
    for i in range(int(seconds * 8)):
        out.write(np.full((32, 32, 3), i * 7 % 255, np.uint8))
    out.release()
    return str(path)


def test_bad_inputs_get_their_message_and_the_app_keeps_serving(client, tmp_path):
    cases = [
        (dict(image=IMAGE, prompt="   "), "the prompt is empty"),
        (dict(), "upload an image first"),
        (dict(image=_write(tmp_path / "broken.png", b"not an image at all")), "not a readable image"),
        (dict(video=_write(tmp_path / "broken.mp4", b"\x00" * 2000)), "not a readable video"),
        (dict(video=_video(tmp_path / "long.mp4", 5)), "the limit is 3 s"),
        (dict(image=IMAGE, video=VIDEO), "not both"),
        (dict(image=IMAGE, methods=["no_such_method"]), "unknown method 'no_such_method'"),
        (dict(image=IMAGE, keep=0), r"keep .* must be in \(0, 1\]"),
        (dict(image=IMAGE, model="some/other-model"), "is not offered here"),
        (dict(image=IMAGE, params="{not json"), "params is not valid JSON"),
        (dict(image=IMAGE, params={"no_such_run": {}}), "not among the runs"),
        (dict(image=IMAGE, max_new_tokens=0), "max_new_tokens must be in 1..512"),
    ]
    for kw, message in cases:
        with pytest.raises(Exception, match=message):
            compare(client, **kw).result()
    big = _write(tmp_path / "big.png", os.urandom(1536 * 1024))  # over the 1 MB limit: refused at upload
    with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):
        compare(client, image=big).result()
    doc = compare(client, image=IMAGE).result()[4]  # other visitors (and this one) are still served
    assert doc["runs"][0]["ok"]


def test_ui_never_imports_torch():
    code = "import sys, ui.demo, ui.handler; assert 'torch' not in sys.modules, 'ui imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- The UI against stand-in pools (the pool is an interface: these need no model and no registry change) ---
LABELS = {"baseline": "Baseline", "in_llm": "Inside the LLM", "kv_cache": "KV cache and decode"}


def _entry(name: str, stage: str, params=()) -> dict:
    return {"name": name, "stage": stage, "stage_label": LABELS[stage], "paper": "", "summary": f"{name} does things",
            "needs": "",
            "fidelity": "faithful", "budget_field": "keep" if params else None,
            "params": [{"name": "keep", "type": "float", "default": 0.5, "choices": []}, *params] if params else []}


CATALOG = [_entry("baseline", "baseline"),
           _entry("alpha", "in_llm", [{"name": "layer", "type": "int", "default": 2, "choices": []}]),
           _entry("beta", "kv_cache", [{"name": "mode", "type": "choice", "default": "a", "choices": ["a", "b"]}])]


class StandInPool:
    """Returns `ok` results for the first `good` runs, then fails as an unreachable Redis would."""

    workers = 1

    def __init__(self, good: int):
        self.good = good

    def catalog(self) -> list[dict]:
        return CATALOG

    def compare(self, comparison):
        from backends.pool import PoolError
        from backends.types import RunResult

        for i, spec in enumerate(comparison.methods[: self.good]):
            yield RunResult(method=spec.name, params=spec.params, answer="two", output_tokens=1, index=i)
        raise PoolError("Redis at redis://10.0.0.1:6379 is unreachable")


@pytest.mark.parametrize("good", [0, 1])
def test_pool_failure_is_reported(good):
    from gradio_client import Client

    from backends.settings import Settings
    from ui.demo import build_demo

    demo = build_demo(StandInPool(good), Settings())
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        job = compare(Client(demo.local_url, verbose=False), image=IMAGE, methods=["alpha", "beta"])
        if good == 0:  # nothing came back: the request fails with the pool's message
            with pytest.raises(Exception, match="worker pool failed: Redis at redis://10.0.0.1:6379 is unreachable"):
                job.result()
        else:  # what came back stays; the rest are marked failed with the reason
            banner, cards, _, _, doc = job.result()
            assert [r["ok"] for r in doc["runs"]] == [True, False, False]
            assert "unreachable" in banner and cards.count('data-state="failed"') == 2
    finally:
        demo.close()


def test_controls_come_from_the_catalog():
    import gradio as gr

    from ui.controls import MethodControls

    with gr.Blocks():
        controls = MethodControls(CATALOG)
        controls.picker()
        controls.parameters()
    assert [g.label for g in controls.groups] == ["Inside the LLM", "KV cache and decode"]
    assert [(m, p, d) for m, p, d, _ in controls.fields] == [("alpha", "layer", 2), ("beta", "mode", "a")]
    methods, params = controls.collect(["alpha"], ["beta"], 3, "a")  # layer changed, mode left at its default
    assert methods == ["baseline", "alpha", "beta"] and params == {"alpha": {"layer": 3}}


def test_request_rules():
    from backends.types import RequestError
    from ui.request import run_order, run_params

    cat = {m["name"]: m for m in CATALOG}
    order = run_order(["alpha", "baseline", "alpha"], cat)
    assert order == ["baseline", "alpha", "alpha"]  # baseline first, repeats kept
    params = run_params(order, {"alpha": {"layer": 1}, "alpha#2": {"layer": 3, "keep": 0.9}}, 0.25, cat)
    assert params == [{}, {"layer": 1, "keep": 0.25}, {"layer": 3, "keep": 0.9}]
    with pytest.raises(RequestError, match="not among the runs"):
        run_params(order, {"alpha#3": {}}, 0.25, cat)


def test_paths_outside_the_upload_folder_are_never_opened(tmp_path):
    from backends.types import RequestError
    from ui.request import upload_folder, upload_path

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for you")
    for path in (str(secret), "/etc/passwd", str(upload_folder() / ".." / "x.png")):
        with pytest.raises(RequestError, match="upload the file again"):
            upload_path({"path": path})
    inside = upload_folder() / "abc" / "img.png"
    assert upload_path({"path": str(inside), "orig_name": "a.png"}) == (str(inside), "a.png")
