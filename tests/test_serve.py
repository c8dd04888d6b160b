"""`python app.py` serves the page on 127.0.0.1 and answers through gradio_client, as a user's program would.

`running_app(...)` starts the real entry point in a subprocess (the UI and browser tests use it too).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def running_app(model_dir: str, **env_extra: str):
    """`python app.py` on a free port with VLM_MODEL=model_dir; yields its URL, stops it after."""
    port = free_port()
    # saved comparisons of a test go to a throwaway file, never to the user's ~/.cache (a test may pass its own)
    env_extra.setdefault("VLM_STORE", os.path.join(tempfile.mkdtemp(prefix="vlm-store-"), "saved.sqlite3"))
    env = dict(os.environ, VLM_MODEL=model_dir, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               OMP_WAIT_POLICY="PASSIVE", **env_extra)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.3)
            assert proc.poll() is None, proc.stdout.read()
        else:
            pytest.fail("app did not come up in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(random_model_dir):
    with running_app(random_model_dir) as url:
        yield url


def test_page_and_api(server, scene_png):
    from gradio_client import Client, handle_file

    html = urllib.request.urlopen(server, timeout=10).read().decode()
    assert "VLM efficiency methods, side by side" in html
    client = Client(server, verbose=False)
    banner, cards, summary, download, doc = client.predict(
        image=handle_file(scene_png), prompt="how many shapes are there?", max_new_tokens=4, api_name="/compare")
    run = doc["runs"][0]
    assert run["ok"] and run["method"] == "baseline" and run["visual_tokens"]["input"] == 64
    assert 'data-state="done"' in cards and "1 of 1 runs finished" in banner and "<table" in summary
    with open(download) as f:
        assert '"runs"' in f.read()
    with pytest.raises(Exception, match="the prompt is empty"):
        client.predict(image=handle_file(scene_png), prompt="  ", max_new_tokens=4, api_name="/compare")
