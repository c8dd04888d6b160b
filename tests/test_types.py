"""Request/result types round-trip through JSON exactly, and malformed payloads are refused."""

import pytest

from backends.types import (
    Comparison,
    GenerationSettings,
    Media,
    MethodSpec,
    RequestError,
    RunRequest,
    RunResult,
    Timings,
    VisualTokens,
    from_json,
    to_json,
)


def test_request_round_trip():
    req = RunRequest(Media("video", ["AAAA", "BBBB"], "clip.mp4", 3.5), "how many?",
                     MethodSpec("random", {"keep": 0.25, "seed": 3}), GenerationSettings(12, 0, 2), "builtin", 4)
    back = from_json(RunRequest, to_json(req))
    assert back == req and isinstance(back.media, Media) and isinstance(back.method, MethodSpec)


def test_comparison_round_trip_and_requests():
    comp = Comparison(Media("image", ["AAAA"]), "q", [MethodSpec("baseline"), MethodSpec("random", {"keep": 0.5})])
    back = from_json(Comparison, to_json(comp))
    assert back == comp
    assert [r.method.name for r in back.requests()] == ["baseline", "random"]


def test_result_round_trip():
    res = RunResult("x", {"keep": 0.5}, answer="two", output_ids=[5, 2],
                    visual_tokens=VisualTokens(64, 16, [64, 16], 40.0), timings_ms=Timings(total=12.5),
                    kept_map=[[[1.0, 0.0], [0.5, 1.0]]], info={"positions": "original"})
    back = from_json(RunResult, to_json(res))
    assert back == res and back.timings_ms.total == 12.5 and back.visual_tokens.per_layer == [64, 16]


@pytest.mark.parametrize("payload, words", [
    ('{"media": {"kind": "image", "frames_png": ["A"]}, "prompt": "q", "method": {"name": "b"}, "evil": 1}',
     "unknown fields"),
    ('{"media": {"kind": "audio", "frames_png": ["A"]}, "prompt": "q", "method": {"name": "b"}}', "media kind"),
    ('{"media": {"kind": "image", "frames_png": []}, "prompt": "q", "method": {"name": "b"}}', "at least one frame"),
    ('{"media": {"kind": "image", "frames_png": ["A"]}, "prompt": "q", "method": {"name": ""}}', "needs a name"),
    ('{"media": {"kind": "image", "frames_png": ["A"]}, "prompt": "q", "method": {"name": "b"},'
     ' "generation": {"max_new_tokens": 0}}', "max_new_tokens"),
    ("not json", "not valid JSON"),
    ('{"media": {"kind": "image", "frames_png": ["A"]}}', "RunRequest"),
])
def test_bad_payloads_are_refused(payload, words):
    with pytest.raises(RequestError, match=words):
        from_json(RunRequest, payload)
