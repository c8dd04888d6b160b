"""What the page draws and keeps, without a model: speedup verdicts, out-of-domain notes, kept-token maps,
saved comparisons (a real SQLite file, a real Redis), exports, and one log line for a refused request."""

from __future__ import annotations

import base64
import csv
import io
import logging

import numpy as np
import pytest
from PIL import Image

from backends.types import Comparison, Media, MethodSpec, RequestError, RunResult, Timings
from tests.test_ui_api import IMAGE, StandInPool, compare

SCENE = Media("image", [base64.b64encode(open(IMAGE, "rb").read()).decode()], name="three_shapes.png")


def _run(method: str, totals: list[float], index: int = 0, ids=(5, 6)) -> RunResult:
    runs = [Timings(total=t, ttft=t / 2) for t in totals]
    mid = sorted(totals)[len(totals) // 2]
    return RunResult(method=method, answer="two", output_ids=list(ids), output_tokens=len(ids), index=index,
                     timings_ms=Timings(total=mid, ttft=mid / 2), timings_ms_all=runs,
                     confidence={"mean": 0.9, "min": 0.8}, flop_ideal_speedup=1.0)


def test_a_speedup_is_claimed_only_when_every_pairing_of_runs_agrees():
    from ui import fmt

    ref = _run("baseline", [10.0, 10.5, 11.0])
    same = _run("random", [9.8, 10.6, 11.2])  # the baseline's work, with its noise
    fast = _run("fastv", [5.0, 5.2, 5.4])
    slow = _run("slow", [20.0, 21.0, 22.0])
    noisy = _run("noisy", [4.0, 6.0, 30.0])  # faster at the median, but one run was slower than the baseline
    assert [fmt.verdict(r, ref) for r in (same, fast, slow, noisy)] == ["same", "faster", "slower", "same"]
    assert fmt.speedup_text(same, ref).startswith("about the same: ×")
    lo, hi = fmt.speedup_range(fast, ref)
    assert lo == pytest.approx(10.0 / 5.4) and hi == pytest.approx(11.0 / 5.0)
    assert fmt.ms_spread(fast, "total") == "5.2 ms (5.0–5.4 ms)"
    one = _run("one", [5.0])  # a single timed run has no range: shown, never coloured
    assert fmt.verdict(one, ref) == "same" and "one timed run" in fmt.speedup_text(one, ref)


def test_cards_colour_only_real_differences_and_say_when_the_input_is_not_a_scene():
    from ui.handler import View

    catalog = {}
    comp = Comparison(SCENE, "how many shapes are there?", [MethodSpec("baseline"), MethodSpec("random"),
                                                            MethodSpec("fastv")], model="builtin")
    view = View(comp, catalog)
    for r in (_run("baseline", [10.0, 10.5, 11.0]), _run("random", [9.8, 10.6, 11.2], 1),
              _run("fastv", [5, 5.2, 5.4], 2)):
        view.add(r)
    cards = view.update()[1]
    assert cards.count("vc-good") == 1 and "vc-bad" not in cards and "about the same" in cards
    assert "Out of domain" not in cards and view.scene_problem == ""
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(noise, "PNG")
    photo = Media("image", [base64.b64encode(noise.getvalue()).decode()], name="photo.png")
    view = View(Comparison(photo, "what is this?", [MethodSpec("baseline")], model="builtin"), catalog)
    view.add(_run("baseline", [10.0, 11.0]))
    cards = view.update()[1]
    assert cards.count('class="vc-ood"') == 1 and "not mostly a light plain background" in cards
    view = View(Comparison(photo, "what is this?", [MethodSpec("baseline")], model="some/hub-model"), catalog)
    view.add(_run("baseline", [10.0, 11.0]))
    assert "vc-ood" not in view.update()[1]  # the note is about the built-in model's training scenes only


def test_kept_patches_keep_their_colours_dropped_dim_merged_hatched():
    from ui import heatmap

    frame = np.zeros((64, 64, 3), np.float32)
    frame[:] = (230, 210, 40)  # a yellow picture
    out = heatmap.overlay(frame, [[1.0, 0.0], [0.25, 1.0]]).astype(int)
    assert tuple(out[10, 10]) == (230, 210, 40)  # kept: true colour (inside the patch, off the border lines)
    assert out[10, 50].max() < 100 and abs(int(out[10, 50, 0]) - int(out[10, 50, 2])) < 2  # dropped: dark grey
    merged = out[34:62, 2:30].reshape(-1, 3)
    scale = heatmap.LUT[int(round(0.25 * 255))].round().astype(int)
    assert (merged == (230, 210, 40)).all(-1).mean() > 0.4  # still mostly its true colour
    assert (np.abs(merged - scale).max(-1) <= 1).any()  # hatched in the scale colour of its share


def _store_round_trip(store) -> None:
    specs = [MethodSpec("baseline"), MethodSpec("random", {"keep": 0.5})]
    comp = Comparison(SCENE, "how many shapes are there?", specs)
    doc = {"prompt": comp.prompt, "runs": [{"method": "baseline", "ok": True}]}
    first, second = store.save(comp, doc), store.save(comp, {**doc, "prompt": "second"})
    record = store.load(first)
    assert record["comparison"] == comp and record["document"] == doc and record["id"] == first
    assert [r["id"] for r in store.recent(5)] == [second, first]
    assert "how many shapes are there?" in store.recent(5)[1]["title"]
    assert store.load("NoSuchId0000") is None
    with pytest.raises(RequestError, match="is not a saved-comparison id"):
        store.load("../../etc/passwd")


def test_sqlite_store_survives_a_restart(tmp_path):
    from backends.store import SqliteStore

    path = tmp_path / "deep" / "saved.sqlite3"
    _store_round_trip(SqliteStore(str(path)))
    again = SqliteStore(str(path))  # a new process opens the same file
    assert len(again.recent(10)) == 2 and again.load(again.recent(1)[0]["id"])["document"]["prompt"] == "second"


def test_a_store_that_cannot_be_opened_turns_saving_off(tmp_path):
    from backends.settings import Settings
    from backends.store import open_store
    from ui.saved import recent_html

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert open_store(Settings(store_path=str(blocker / "saved.sqlite3"))) is None
    assert "Saved comparisons are off" in recent_html(None)


def test_redis_store(redis_server):
    from backends.store import RedisStore

    _store_round_trip(RedisStore(redis_server.url))


def test_exports_one_csv_row_a_run_and_a_run_card():
    from backends.document import document
    from ui import exports

    comp = Comparison(SCENE, "how many | shapes?", [MethodSpec("baseline"), MethodSpec("fastv")])
    fail = RunResult.failed(MethodSpec("fastv"), "boom", 1)
    doc = document(comp, [_run("baseline", [10.0, 10.5, 11.0]), fail])
    rows = list(csv.DictReader(io.StringIO(exports.to_csv(doc))))
    assert [(r["method"], r["ok"], r["error"]) for r in rows] == [("baseline", "True", ""), ("fastv", "False", "boom")]
    assert rows[0]["total_min_ms"] == "10.0" and rows[0]["total_max_ms"] == "11.0" and rows[0]["timed_runs"] == "3"
    card = exports.run_card(doc, "http://host/?id=abc12345")
    assert card.startswith("# how many \\| shapes?") and "| 2 | fastv | failed: boom |" in card
    assert card.rstrip().endswith("Reopen: http://host/?id=abc12345")


def test_a_refused_request_logs_one_line_and_no_trace(caplog, capfd):
    from gradio_client import Client

    from backends.settings import Settings
    from ui.demo import build_demo

    demo = build_demo(StandInPool(1), Settings())
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with caplog.at_level(logging.WARNING, logger="vlm.ui"):
            job = compare(Client(demo.local_url, verbose=False), image=IMAGE, prompt="   ")
            with pytest.raises(Exception, match="the prompt is empty"):
                job.result()
            assert job.outputs()[0][0].startswith('<div class="vc-error" data-state="refused">')  # cleared page
    finally:
        demo.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "vlm.ui"]
    assert len(lines) == 1 and lines[0].startswith("refused a compare request: the prompt is empty"), lines
    assert "Traceback" not in capfd.readouterr().err


class BrokenPool(StandInPool):
    def compare(self, comparison):
        raise RuntimeError("a bug in the pool")
        yield


def test_a_real_fault_keeps_its_trace(caplog):
    from gradio_client import Client

    from backends.settings import Settings
    from ui.demo import build_demo

    demo = build_demo(BrokenPool(0), Settings())
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with caplog.at_level(logging.WARNING, logger="vlm.ui"):
            with pytest.raises(Exception, match="The worker pool failed: RuntimeError: a bug in the pool"):
                compare(Client(demo.local_url, verbose=False), image=IMAGE).result()
    finally:
        demo.close()
    faults = [r for r in caplog.records if r.name == "vlm.ui"]
    assert len(faults) == 1 and faults[0].exc_info and "a bug in the pool" in str(faults[0].exc_info[1])

