"""The job API without a worker: request validation (422), dataset paths confined to the data root
(403 outside, 404 missing, 400 wrong shape), upload checks (type, size, unsafe zips), auth, and the
broker going down and coming back (a private Redis on a free port: 503, then 200)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.helpers import LiveServer, assert_error, free_port, make_settings, png_bytes
from tests.service.jobs.conftest import job_env


class PrivateRedis:
    """A redis-server of our own (so stopping it disturbs nobody)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, module_store: Path, redis: PrivateRedis
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("jobs_api")
    _, overrides = job_env(store=module_store, data_dir=data_dir, broker=redis.url, queue="momo-api-test")
    settings = make_settings(
        module_store,
        data_dir,
        job_worker="off",
        max_upload_bytes=256 * 1024,
        max_upload_extracted_bytes=1024 * 1024,
        max_upload_entries=50,
        **overrides,
    )
    root = data_dir / "datasets"
    for label, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / "shapes" / label).mkdir(parents=True)
        for i in range(3):
            (root / "shapes" / label / f"{i}.png").write_bytes(png_bytes(color))
    (root / "texts.jsonl").write_text('{"text": "hello", "label": "greeting"}\n')
    outside = data_dir / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "secret", "label": "x"}\n')
    os.symlink(outside, root / "escape")
    with LiveServer(settings) as server:
        yield server


@pytest.fixture()
def client(api: LiveServer) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


def _post(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/fine-tunes", json=body)


def _jobs(client: httpx.Client) -> list[str]:
    return [j["id"] for j in client.get("/v1/fine-tunes", params={"limit": 100}).json()["data"]]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "momo-test:.."),
        ("model", "momo-test:."),
        ("model", ".."),
        ("model", "../etc"),
        ("model", "momo-test/v1"),
        ("model", "momo-test:v1\x00"),
        ("output_name", ".."),
        ("output_name", "a/b"),
        ("output_name", "momo-test:v2"),
    ],
)
def test_model_references_are_checked_before_anything_is_queued(
    client: httpx.Client, field: str, value: str
) -> None:
    """`momo-test:..` and `momo-test:.` used to be queued (the second as `store:momo-test`)."""
    before = _jobs(client)
    body = {"task": "text_classification", "dataset_path": "texts.jsonl", field: value}
    error = assert_error(_post(client, **body), 400, "invalid_model_reference")
    assert error["param"] == field
    assert _jobs(client) == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"dataset_path": "texts.jsonl"},
        {"task": "translation", "dataset_path": "texts.jsonl"},
        {"task": "text_classification"},
        {"task": "text_classification", "dataset_path": "texts.jsonl", "training_file": "file-" + "0" * 24},
        {"task": "text_classification", "training_file": "not-a-file-id"},
        {"task": "text_classification", "dataset_path": "texts.jsonl", "head": "1bad-name"},
        {"task": "text_classification", "dataset_path": "texts.jsonl", "head": "itm"},
        {"task": "retrieval", "dataset_path": "texts.jsonl", "head": "anything"},
        {"task": "text_classification", "dataset_path": "texts.jsonl", "surprise": 1},
        {"task": "text_classification", "dataset_path": "texts.jsonl", "hyperparameters": {"epochs": 0}},
        {
            "task": "text_classification",
            "dataset_path": "texts.jsonl",
            "hyperparameters": {"learning_rate": 2},
        },
        {"task": "text_classification", "dataset_path": "texts.jsonl", "hyperparameters": {"batch_size": 0}},
        {
            "task": "text_classification",
            "dataset_path": "texts.jsonl",
            "hyperparameters": {"validation_split": 0.9},
        },
        {"task": "text_classification", "dataset_path": "texts.jsonl", "hyperparameters": {"epochs": "many"}},
        {"task": "text_classification", "dataset_path": "texts.jsonl", "hyperparameters": {"dropout": 0.1}},
        {"task": "retrieval", "dataset_path": "texts.jsonl", "hyperparameters": {"batch_size": 1}},
    ],
)
def test_invalid_requests_are_422(client: httpx.Client, body: dict[str, Any]) -> None:
    assert_error(_post(client, **body), 422)


def test_invalid_json_and_paging_bounds_are_422(client: httpx.Client) -> None:
    r = client.post("/v1/fine-tunes", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_json")
    assert_error(client.get("/v1/fine-tunes", params={"limit": 0}), 422)
    assert_error(client.get("/v1/fine-tunes", params={"limit": 101}), 422)


@pytest.mark.parametrize(
    ("task", "path", "status", "code"),
    [
        ("text_classification", "../outside/secret.jsonl", 403, "dataset_path_forbidden"),
        ("text_classification", "shapes/../../outside/secret.jsonl", 403, "dataset_path_forbidden"),
        ("text_classification", "/etc/passwd", 403, "dataset_path_forbidden"),
        (
            "text_classification",
            "escape/secret.jsonl",
            403,
            "dataset_path_forbidden",
        ),  # a symlink leading out
        ("image_classification", "escape", 403, "dataset_path_forbidden"),
        ("text_classification", "nothing/here.jsonl", 404, "dataset_not_found"),
        ("image_classification", "texts.jsonl", 400, "invalid_dataset"),
        ("text_classification", "shapes", 400, "invalid_dataset"),
    ],
)
def test_dataset_paths_are_confined_to_the_data_root(
    client: httpx.Client, api: LiveServer, task: str, path: str, status: int, code: str
) -> None:
    error = assert_error(_post(client, task=task, dataset_path=path), status, code)
    assert error["param"] == "dataset_path"
    # the answer never shows where the data root is, nor (for a refused path) what lies outside it
    root = api.settings.resolved_data_root
    assert str(root) not in error["message"] and str(root.resolve()) not in error["message"]
    if status == 403:
        assert "secret" not in error["message"] and "outside/" not in error["message"]


def test_accepted_paths_queue_a_job_and_unknown_references_are_404(
    client: httpx.Client, api: LiveServer
) -> None:
    inside = str(api.settings.resolved_data_root / "shapes")  # absolute, but inside the root
    r = _post(client, task="image_classification", dataset_path=inside, model="momo-test:v1")
    assert r.status_code == 200, r.text
    job = r.json()
    assert (
        job["state"] == "queued" and job["dataset"] == {"path": "shapes"} and job["model"] == "momo-test:v1"
    )
    assert job["events"][0]["message"] == "job created"
    assert client.post(f"/v1/fine-tunes/{job['id']}/cancel").json()["state"] == "cancelled"
    assert_error(
        _post(client, task="text_classification", dataset_path="texts.jsonl", model="nope"),
        404,
        "model_not_found",
    )
    assert_error(
        _post(client, task="text_classification", training_file="file-" + "a" * 24), 404, "file_not_found"
    )
    assert_error(client.post("/v1/fine-tunes/ftjob-nope/cancel"), 404, "job_not_found")


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _upload(client: httpx.Client, name: str, data: bytes, **form: str) -> httpx.Response:
    return client.post("/v1/files", files={"file": (name, data, "application/octet-stream")}, data=form)


def test_uploads_are_checked(client: httpx.Client, api: LiveServer) -> None:
    png = png_bytes()
    assert_error(_upload(client, "data.csv", b"a,b\n"), 400, "unsupported_file_type")
    assert_error(_upload(client, "data.jsonl", b""), 400, "empty_file")
    assert_error(_upload(client, "data.jsonl", b'{"text": "x", "label": "y"}\n', purpose="chat"), 400)
    assert_error(_upload(client, "data.zip", b"PK not really a zip"), 400, "invalid_archive")
    assert_error(_upload(client, "data.zip", _zip({"a/../../evil.png": png})), 400, "invalid_archive")
    assert_error(_upload(client, "data.zip", _zip({"/abs/evil.png": png})), 400, "invalid_archive")
    assert_error(
        _upload(client, "data.zip", _zip({"cat/1.png": png}, symlink="cat/link.png")), 400, "invalid_archive"
    )
    many = {f"c{i % 2}/{i}.png": png for i in range(60)}
    assert_error(_upload(client, "data.zip", _zip(many)), 413, "archive_too_large")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("c/zeros.png", b"\0" * (2 * 1024 * 1024))  # 2 MiB of zeros compress to ~2 KiB
    assert_error(_upload(client, "bomb.zip", bomb.getvalue()), 413, "archive_too_large")
    big = b'{"text": "x", "label": "y"}\n' * 12_000  # ~330 KB > 256 KiB
    assert_error(_upload(client, "big.jsonl", big), 413, "file_too_large")

    def chunks() -> Iterator[bytes]:  # valid multipart without a Content-Length: counted while it streams
        yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        for _ in range(40):
            yield b'{"text": "x", "label": "y"}\n' * 400
        yield b"\r\n--zz--\r\n"

    r = client.post(
        "/v1/files", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert_error(r, 413, "file_too_large")
    uploads = api.settings.resolved_data_root / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())  # nothing half-written is left

    ok = _upload(client, "texts.jsonl", b'{"text": "x", "label": "y"}\n')
    assert ok.status_code == 200, ok.text
    assert ok.json()["dataset_path"] == f"uploads/{ok.json()['id']}/texts.jsonl"
    assert_error(client.get("/v1/files/file-unknown"), 404, "file_not_found")


def test_job_routes_need_an_api_key(api: LiveServer) -> None:
    with api.client(key=None) as anonymous:
        assert_error(anonymous.get("/v1/fine-tunes"), 401)
        assert_error(_upload(anonymous, "x.jsonl", b"{}"), 401)
        assert_error(_post(anonymous, task="vqa", dataset_path="x.jsonl"), 401)


def test_broker_down_answers_503_then_recovers(client: httpx.Client, redis: PrivateRedis) -> None:
    body = {"task": "text_classification", "dataset_path": "texts.jsonl"}
    assert _post(client, **body).status_code == 200  # warm: a pooled connection exists
    count = len(client.get("/v1/fine-tunes", params={"limit": 100}).json()["data"])
    redis.stop()
    try:
        started = time.monotonic()
        r = _post(client, **body)
        assert_error(r, 503, "broker_unavailable")
        assert r.headers.get("retry-after") == "5" and time.monotonic() - started < 10
        assert (
            len(client.get("/v1/fine-tunes", params={"limit": 100}).json()["data"]) == count
        )  # nothing kept
    finally:
        redis.start()
    deadline = time.monotonic() + 20
    while (r := _post(client, **body)).status_code != 200:
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(0.5)
    assert r.json()["state"] == "queued"


def test_every_api_hyperparameter_is_a_finetune_option() -> None:
    import dataclasses

    from service.jobs.schemas import Hyperparameters
    from training.finetune import FinetuneOptions

    options = {f.name for f in dataclasses.fields(FinetuneOptions)}
    assert set(Hyperparameters.model_fields) <= options
    FinetuneOptions(task="vqa", **Hyperparameters().model_dump()).validate()
