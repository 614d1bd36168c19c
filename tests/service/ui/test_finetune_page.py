"""The Fine-tune and Models sections with a real job: `momo serve` on the bundled model starts its
embedded `momo worker` (Celery on the embedded broker) at the first job, as `make serve` does. The
page uploads a micro dataset, starts the job, follows its progress to the end, activates the new
version, uses its head, and switches back to the bundled version."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.service.helpers import colors_zip
from tests.service.ui.conftest import BUNDLED, Playground, ServeProcess, bundled_store, shape_png

pytestmark = pytest.mark.slow
JOB_TIMEOUT_MS = 240_000  # the worker starts (imports torch and training/), trains, exports ONNX


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """This module's own server: it registers and activates versions in its own store copy."""
    workdir = tmp_path_factory.mktemp("playground-finetune")
    store = bundled_store(workdir / "model_store")
    # a pause after each step keeps the job running long enough for the page to show it mid-way
    serve = ServeProcess(
        workdir, model_store=store, runtime_cache_dir=workdir / "cache", job_step_delay_s=0.5
    )
    serve.start()
    try:
        yield serve
    finally:
        serve.stop()


def test_fine_tune_follow_the_job_and_activate_its_version(
    playground: Playground, server: ServeProcess, files: Any
) -> None:
    base = "{}:{}".format(*BUNDLED)
    new = f"{BUNDLED[0]}:v{int(BUNDLED[1][1:]) + 1}"  # the next version of the private store
    playground.expect_http_errors(400)
    page = playground.open("finetune")
    panel = page.get_by_role("tabpanel", name="Fine-tune")
    expect(panel.locator("#finetune-jobs")).to_contain_text("No fine-tune jobs yet.")
    # a file of the wrong kind: the API's message
    panel.get_by_label("Dataset file").set_input_files(files("notes.txt", b"not a dataset"))
    panel.get_by_role("button", name="Upload and start").click()
    with server.client() as api:
        refused = api.post("/v1/files", files={"file": ("notes.txt", b"not a dataset")}).json()["error"]
    expect(panel.get_by_role("alert").locator(".message")).to_have_text(refused["message"])

    panel.get_by_label("Dataset file").set_input_files(files("colors.zip", colors_zip(8, seed=0)))
    panel.get_by_label("Task").select_option("image_classification")
    expect(panel.locator("#finetune-format")).to_contain_text("one sub-folder per class")
    panel.get_by_label("Head name").fill("color")
    panel.get_by_label("Epochs").fill("4")
    panel.get_by_label("Batch size").fill("4")
    panel.get_by_label("Learning rate").fill("0.001")
    panel.get_by_role("button", name="Upload and start").click()

    job = panel.locator("#finetune-job")
    state = job.locator(".job-state")
    progress = page.get_by_role("progressbar")
    # live: the page shows the job running part-way before it is done
    page.wait_for_function(
        """() => {
            const bar = document.querySelector('#finetune-progress');
            const state = document.querySelector('#finetune-job .job-state')?.textContent;
            return bar && state === 'running' && bar.value > 0 && bar.value < 1;
        }""",
        timeout=JOB_TIMEOUT_MS,
    )
    expect(job.locator(".job-step")).to_contain_text(" of ")
    expect(job.locator(".metrics")).to_contain_text("loss")
    expect(state).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(progress).to_have_js_property("value", 1)
    expect(job.locator(".job-step")).to_contain_text("(100.0 %)")
    expect(job.locator(".result-model")).to_have_text(new)
    first_job = job.locator("h3 code").inner_text()
    expect(panel.locator("#finetune-jobs tbody tr").first).to_contain_text("succeeded")
    playground.shot("finetune")

    panel.get_by_role("button", name=f"Activate {new}").click()
    expect(job).to_contain_text(f"Now serving {new}.")
    expect(page.locator("#server-status")).to_contain_text(f"Serving {new}")

    # Models: the new version is active and serving, with its fine-tuning figures and parent
    page.get_by_role("tab", name="Models").click()
    models = page.get_by_role("tabpanel", name="Models")
    row = models.locator(f'tr[data-model="{new}"]')
    expect(row.locator(".badge")).to_have_text(["active", "serving"])
    expect(row).to_contain_text(base)  # the parent
    with server.client() as api:
        finetune = api.get(f"/v1/models/{new}").json()["metrics"]["finetune"]
    expect(models.locator(".finetune-figures")).to_contain_text(
        f"validation accuracy {finetune['validation_before']:.3f}"
    )
    expect(models.locator(".finetune-figures")).to_contain_text(f"→ {finetune['validation_after']:.3f}")

    # Classify: the new head is offered and answers with its labels
    page.get_by_role("tab", name="Classify").click()
    classify = page.get_by_role("tabpanel", name="Classify")
    classify.get_by_label("Method").select_option("color")
    classify.get_by_label("Image file").set_input_files(files("red.png", shape_png("red", "square")))
    classify.get_by_role("button", name="Classify").click()
    expect(classify.locator(".bars .label")).to_have_count(3)
    assert set(classify.locator(".bars .label").all_inner_texts()) == {"red", "green", "blue"}

    # back to the bundled version from the Models section
    page.get_by_role("tab", name="Models").click()
    models.get_by_role("button", name=f"Activate {base}").click()
    expect(models.locator("#models-status")).to_have_text(f"Now serving {base} (was {new}).")
    expect(models.locator(f'tr[data-model="{base}"] .badge')).to_have_text(["active", "serving"])
    playground.shot("models-after-fine-tune")

    # another job, cancelled from its card: it ends cancelled and registers nothing
    page.get_by_role("tab", name="Fine-tune").click()
    panel.get_by_role("button", name="Upload and start").click()
    expect(job.locator("h3")).not_to_contain_text(first_job)
    job.get_by_role("button", name="Cancel job").click()
    expect(state).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(job.get_by_role("button", name="Cancel job")).to_be_hidden()
    expect(panel.locator("#finetune-jobs tbody tr").first).to_contain_text("cancelled")
    with server.client() as api:
        assert [m["id"] for m in api.get("/v1/models").json()["data"]] == [base, new]
