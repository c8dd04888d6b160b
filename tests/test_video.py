"""Video input: OpenCV decoding, evenly spaced frames, and refusals with clear messages."""

import cv2
import numpy as np
import pytest

from backends import media
from backends.settings import Settings
from backends.types import RequestError


def write_video(path, n_frames=30, fps=10, size=64):
    """Frame i is a flat grey of level 8*i, so a sampled frame tells which index it came from."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    for i in range(n_frames):
        w.write(np.full((size, size, 3), (8 * i) % 256, np.uint8))
    w.release()
    return path


def test_samples_evenly(tmp_path):
    path = write_video(tmp_path / "clip.avi")
    frames, duration = media.sample_video(path, Settings(), frames=8)
    assert duration == pytest.approx(3.0)
    got = [round(float(np.asarray(f).mean()) / 8) for f in frames]
    assert got == np.linspace(0, 29, 8).round().astype(int).tolist()


def test_video_media_round_trip(tmp_path):
    m = media.video_media(write_video(tmp_path / "clip.avi"), Settings(), frames=4)
    assert m.kind == "video" and len(m.frames_png) == 4 and m.duration_s == pytest.approx(3.0)
    assert [f.size for f in media.frames_of(m, Settings())] == [(64, 64)] * 4


def test_too_long_refused(tmp_path):
    path = write_video(tmp_path / "long.avi", n_frames=40, fps=10)
    with pytest.raises(RequestError, match=r"lasts 4 s; the limit is 2 s"):
        media.sample_video(path, Settings(max_video_seconds=2))


def test_broken_video_refused(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(RequestError, match="not a readable video"):
        media.sample_video(bad, Settings())
