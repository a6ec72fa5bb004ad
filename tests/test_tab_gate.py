"""The guard in front of the Gradio tab (api/tab_gate.py), hidden files on both download routes, and one error
shape for unknown routes with and without the tab.

The login tests run `python -m framepack serve --auth` as a real process and talk HTTP to it with httpx; the list
of Gradio routes they sweep comes from the route table of the same app built in this process. Without a session
only the login page and its static assets answer; with one, every route answers as Gradio does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from api_live_server import LiveServer
from fastapi.testclient import TestClient
from helpers import tiny_home
from starlette.routing import Mount

from api.auth import Credentials
from api.routes import PREFIX
from api.server import create_app
from api.tab_gate import LOGIN_PATHS, PUBLIC_PATHS, PUBLIC_PREFIXES, LoginLimiter, TabGate, hidden_file
from framepack.jobs.manager import JobManager
from framepack.serve import mount_tab

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
USER, PASSWORD = "ada", "s3cret-pass"
VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42 not really a video"


def assert_error(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, (response.request.method, response.request.url, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert error["kind"] == kind and error["message"], error
    return error


def output_files(outputs: Path) -> None:
    """A finished video, a temporary one, and links to each inside the output folder."""
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "visible.mp4").write_bytes(VIDEO_BYTES)
    (outputs / ".job.partial.mp4").write_bytes(b"half written")
    (outputs / "ok.mp4").symlink_to(".job.partial.mp4")  # a visible name for a temporary file
    (outputs / "alias.mp4").symlink_to("visible.mp4")  # a link to a finished file stays served
    (outputs / ".frames.partial").mkdir()
    (outputs / ".frames.partial" / "f-00000.png").write_bytes(b"png")


def gradio_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the Gradio app mounted at "/" of `app`, through included routers, less
    the paths the REST app answers itself (its /openapi.json comes first)."""
    mount = next(route for route in app.routes if isinstance(route, Mount))
    gradio_app = mount.app.app if isinstance(mount.app, TabGate) else mount.app
    shadowed = {route.path for route in app.routes if getattr(route, "path", "") and not isinstance(route, Mount)}

    def walk(routes, prefix: str):
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router (recent FastAPI)
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif getattr(route, "methods", None):
                for method in sorted(route.methods):
                    yield method, prefix + route.path

    return sorted({(method, path) for method, path in walk(gradio_app.routes, "") if path not in shadowed})


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def public(method: str, path: str) -> bool:
    return (method in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))) or (
        method == "POST" and path in LOGIN_PATHS
    )


def status_of(client: httpx.Client, method: str, path: str) -> httpx.Response:
    """The answer's status and headers (read in full unless it streams: heartbeats never end)."""
    with client.stream(method, path) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
        return response


# ------------------------------------------------------------------------------------------------ units


def test_login_limiter_refuses_past_ten_failures_a_minute_per_client():
    now = [1000.0]
    limiter = LoginLimiter(limit=10, window_s=60, clock=lambda: now[0])
    for _ in range(10):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        now[0] += 1
    assert limiter.retry_after("10.0.0.1") == 50  # now t=1010; the first failure (t=1000) leaves at t=1060
    assert limiter.retry_after("10.0.0.2") is None  # another client is not affected
    now[0] = 1060.5
    assert limiter.retry_after("10.0.0.1") is None  # one failure left the window: one more attempt
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 1


def test_hidden_file_sees_hidden_parts_below_the_output_folder_and_through_links(tmp_path):
    outputs = tmp_path / ".home" / "outputs"  # a hidden folder above the outputs hides nothing
    output_files(outputs)
    assert not hidden_file(str(outputs / "visible.mp4"), [outputs])
    assert not hidden_file(str(outputs / "alias.mp4"), [outputs])
    assert hidden_file(str(outputs / ".job.partial.mp4"), [outputs])
    assert hidden_file(str(outputs / "ok.mp4"), [outputs])  # the link resolves to a temporary file
    assert hidden_file(str(outputs / ".frames.partial" / "f-00000.png"), [outputs])
    assert hidden_file(str(outputs / "sub" / ".." / ".job.partial.mp4"), [outputs])
    assert hidden_file("/tmp/gradio/abc/.secret.png", [outputs])  # a hidden file name anywhere
    assert not hidden_file("/tmp/gradio/abc/image.png", [outputs])


# ------------------------------------------------------------------------------------------------ without the tab


@pytest.fixture
def rest_app(runner, tmp_path):
    manager = JobManager(tmp_path / "data", runner)
    output_files(runner.output_dir)
    yield create_app(manager, runner.output_dir, manage_lifecycle=False)
    manager.close(timeout=10)


def test_files_route_refuses_a_link_to_a_temporary_file(rest_app):
    with TestClient(rest_app) as client:
        assert client.get(f"{PREFIX}/files/visible.mp4").content == VIDEO_BYTES
        assert client.get(f"{PREFIX}/files/alias.mp4").content == VIDEO_BYTES
        for name in ("ok.mp4", ".job.partial.mp4", ".frames.partial/f-00000.png"):
            error = assert_error(client.get(f"{PREFIX}/files/{name}"), 404, "not_found")
            assert error["field"] == "path"


def test_unknown_routes_and_methods_answer_the_error_shape_without_the_tab(rest_app):
    with TestClient(rest_app) as client:
        assert_error(client.get("/nope"), 404, "not_found")
        assert_error(client.get(f"{PREFIX}/nope"), 404, "not_found")
        assert_error(client.delete(f"{PREFIX}/codecs"), 405, "method_not_allowed")
        assert_error(client.put("/openapi.json"), 405, "method_not_allowed")


# ------------------------------------------------------------------------------------------------ tab, no login


@pytest.fixture
def tab_client(runner, tmp_path):
    manager = JobManager(tmp_path / "data", runner)
    output_files(runner.output_dir)
    app = create_app(manager, runner.output_dir, manage_lifecycle=False)
    app = mount_tab(app, manager, runner.output_dir, tmp_path)
    with TestClient(app) as client:
        yield client, runner.output_dir
    manager.close(timeout=10)


def test_with_the_tab_unknown_routes_and_methods_answer_the_error_shape(tab_client):
    client, _ = tab_client
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/gradio_api/nope"), 404, "not_found")
    assert_error(client.get(f"{PREFIX}/nope"), 404, "not_found")
    assert_error(client.post(f"{PREFIX}/jobs/nope/nope"), 404, "not_found")
    assert_error(client.delete(f"{PREFIX}/codecs"), 405, "method_not_allowed")  # a REST path, another method
    assert_error(client.put("/"), 405, "method_not_allowed")  # a Gradio path, another method
    assert client.get("/").status_code == 200 and "text/html" in client.get("/").headers["content-type"]
    assert client.get(f"{PREFIX}/jobs").status_code == 200
    assert_error(client.get(f"{PREFIX}/jobs/nope"), 404, "not_found")  # the REST routes keep answering


def test_gradio_file_route_serves_no_hidden_or_temporary_file(tab_client):
    client, outputs = tab_client
    assert client.get(f"/gradio_api/file={outputs}/visible.mp4").content == VIDEO_BYTES
    assert client.get(f"/gradio_api/file={outputs}/alias.mp4").content == VIDEO_BYTES
    for name in ("ok.mp4", ".job.partial.mp4", ".frames.partial/f-00000.png", "sub/../.job.partial.mp4"):
        assert_error(client.get(f"/gradio_api/file={outputs}/{name}"), 404, "not_found")
        assert_error(client.get(f"/gradio_api/file/{outputs}/{name}"), 404, "not_found")


# ------------------------------------------------------------------------------------------------ tab with login


@pytest.fixture(scope="module")
def routes(tiny_model_dir, tmp_path_factory) -> list[tuple[str, str]]:
    """The Gradio routes of the tab as `serve --auth` mounts it (built here, not served)."""
    base = tmp_path_factory.mktemp("routes")
    from framepack.runner import Runner

    runner = Runner(device="cpu", output_dir=base / "out", home=tiny_home(tiny_model_dir, base / "home"))
    manager = JobManager(base / "data", runner)
    credentials = Credentials.from_options(f"{USER}:{PASSWORD}")
    app = mount_tab(create_app(manager, base / "out", credentials), manager, base / "out", base, credentials)
    manager.close(timeout=10)
    found = gradio_routes(app)
    assert len(found) > 40 and ("POST", "/gradio_api/queue/join") in found and ("POST", "/gradio_api/reset") in found
    return found


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("gate-server")
    output_files(base / "data" / "outputs")
    live = LiveServer(
        tiny_home(tiny_model_dir, base / "home"), base / "data", base / "server.log", "--auth", f"{USER}:{PASSWORD}"
    ).start()
    live.outputs = base / "data" / "outputs"
    yield live
    live.kill()


def login(client: httpx.Client) -> None:
    response = client.post("/login", data={"username": USER, "password": PASSWORD})
    assert response.status_code == 200 and response.json() == {"success": True}, response.text


def test_login_page_carries_no_api_description(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '"auth_required":true' in page.text.replace(" ", "")
        assert 'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}}' in page.text
        assert "parameter_name" not in page.text and "/gradio_api/call" not in page.text
        assert len(page.content) < 20_000  # the page with the API description is about 900 kB
        script = re.search(r'src="\./(assets/[^"]+\.js)"', page.text)[1]  # the login page's own script
        assert client.get(f"/{script}").status_code == 200
        assert client.get("/theme.css").status_code == 200
        login(client)
        described = client.get("/")
        assert "parameter_name" in described.text  # after login Gradio's page is whole again


def test_every_gradio_route_needs_a_session_but_the_login_page_and_assets(server, routes):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        refused = []
        for method, path in routes:
            if public(method, path):
                continue
            response = status_of(client, method, concrete(path))
            if response.status_code != 401:
                refused.append((method, path, response.status_code))
            elif method != "HEAD":
                assert response.json()["error"]["kind"] == "unauthorized"
        assert not refused, f"answered without a session: {refused}"
        for path in ("/gradio_api/reset", "/gradio_api/cancel"):  # the examples, with plausible bodies
            answer = client.post(path, json={"event_id": "x", "session_hash": "y", "fn_index": 0})
            assert_error(answer, 401, "unauthorized")
        assert_error(client.get("/gradio_api/heartbeat/abc"), 401, "unauthorized")
        assert_error(client.get("/gradio_api/startup-events"), 401, "unauthorized")
        assert_error(client.post("/gradio_api/queue/join", json={}), 401, "unauthorized")
        assert_error(client.post("/gradio_api/upload", files={"files": ("a.png", b"x")}), 401, "unauthorized")
        assert_error(client.get("/gradio_api/info"), 401, "unauthorized")
        assert_error(client.get("/config"), 401, "unauthorized")
        assert_error(client.get("/nope"), 404, "not_found")  # unknown paths: the error shape, session or not

        login(client)
        still_refused = []
        for method, path in routes:
            if path in LOGIN_PATHS or path == "/logout" or method == "HEAD":  # a login would count, a logout
                continue  # would end the session; HEAD has no body to tell the gate's 401 (GET covers the path)
            response = status_of(client, method, concrete(path))
            if response.status_code == 401 and "error" in response.json():  # Gradio's own 401s (run history
                still_refused.append((method, path))  # wants a Hugging Face token) say {"detail": ...}
        assert not still_refused, f"refused with a session: {still_refused}"
        assert client.get("/gradio_api/info").json()["named_endpoints"]
        assert client.post("/gradio_api/reset", json={"event_id": "x"}).json() == {"success": True}


def test_files_behind_the_login_serve_no_hidden_or_temporary_file(server):
    outputs = server.outputs
    with httpx.Client(base_url=server.url, timeout=30, auth=(USER, PASSWORD)) as client:
        assert_error(client.get(f"/gradio_api/file={outputs}/visible.mp4"), 401, "unauthorized")  # Basic is no session
        login(client)
        assert client.get(f"/gradio_api/file={outputs}/visible.mp4").content == VIDEO_BYTES
        for name in ("ok.mp4", ".job.partial.mp4", ".frames.partial/f-00000.png"):
            assert_error(client.get(f"/gradio_api/file={outputs}/{name}"), 404, "not_found")
            assert_error(client.get(f"{PREFIX}/files/{name}"), 404, "not_found")
        assert client.get(f"{PREFIX}/files/visible.mp4").content == VIDEO_BYTES
        assert_error(client.delete(f"{PREFIX}/codecs"), 405, "method_not_allowed")


def test_failed_logins_are_limited_per_client(server):
    """Runs last in this module: afterwards this client (127.0.0.1) cannot log in for a minute."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for attempt in range(10):
            wrong = client.post("/login", data={"username": USER, "password": f"guess-{attempt}"})
            assert wrong.status_code == 400, wrong.text  # Gradio's own answer, which its login form shows
        for password in ("guess-10", PASSWORD):  # past the limit even the right password waits
            refused = client.post("/login", data={"username": USER, "password": password})
            error = assert_error(refused, 429, "rate_limited")
            assert 0 < int(refused.headers["retry-after"]) <= 60 and "failed logins" in error["message"]
        assert "access-token" not in " ".join(client.cookies.keys())
        assert client.get(f"{PREFIX}/jobs", auth=(USER, PASSWORD)).status_code == 200  # the REST API is unaffected
