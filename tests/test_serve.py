"""`python app.py` serves the page on 127.0.0.1 and answers through gradio_client, as a user's program would."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server(random_model_dir):
    port = free_port()
    env = dict(os.environ, VLM_MODEL=random_model_dir, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
    else:
        proc.kill()
        pytest.fail("app did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_page_and_api(server, scene_png):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    doc = client.predict(image=handle_file(scene_png), prompt="how many shapes are there?", max_new_tokens=4,
                         api_name="/compare")
    assert doc["runs"][0]["ok"] and doc["runs"][0]["visual_tokens"]["input"] == 64
    with pytest.raises(Exception, match="the prompt is empty"):
        client.predict(image=handle_file(scene_png), prompt="  ", max_new_tokens=4, api_name="/compare")
