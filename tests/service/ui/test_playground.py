"""The playground's sections in a real browser against `momo serve` with the bundled model: each test
acts with clicks, keys and file inputs, then checks what the page shows against the API's own answer
for the same request (and, where the model is clearly right, against the truth)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect

from tests.service.helpers import data_uri
from tests.service.ui.conftest import API_KEY, BUNDLED, COLORS, Playground, ServeProcess, shape_png


def shown_bars(panel: Any) -> list[tuple[str, str]]:
    rows = panel.locator(".bars li")
    return [
        (rows.nth(i).locator(".label").inner_text(), rows.nth(i).locator(".value").inner_text())
        for i in range(rows.count())
    ]


def percent(p: float) -> str:
    return f"{100 * p:.1f} %"


def test_classify_ranks_labels_and_uses_the_models_heads(
    playground: Playground, server: ServeProcess, files: Any
) -> None:
    page = playground.open("classify")
    panel = page.get_by_role("tabpanel", name="Classify")
    red = files("red circle.png", shape_png("red"))
    panel.get_by_label("Image file").set_input_files(red)
    expect(panel.get_by_role("img", name="red circle.png")).to_be_visible()  # the preview, with alt text
    panel.get_by_role("button", name="Classify").click()
    expect(panel.locator(".top-label")).to_have_text("red")
    with server.client() as api:
        expected = api.post(
            "/v1/classify",
            json={
                "input": {"image": data_uri(red.read_bytes())},
                "labels": COLORS,
                "template": "a photo of a {label}",
            },
        ).json()
    ranked = expected["data"][0]["labels"]
    assert shown_bars(panel) == [(row["label"], percent(row["score"])) for row in ranked]
    playground.shot("classify")

    # a text, with labels one per line and another template
    panel.get_by_label("Text", exact=True).check()
    expect(panel.get_by_label("Image file")).to_be_hidden()
    panel.get_by_label("Text to classify").fill("a large blue square")
    panel.get_by_label("Labels").fill("red\nblue")
    panel.get_by_label("Template").fill("a large {label} square")
    panel.get_by_role("button", name="Classify").click()
    expect(panel.locator(".bars li")).to_have_count(2)
    expect(panel.locator(".result")).to_contain_text("template “a large {label} square”")
    assert shown_bars(panel)[0][0] == "blue"  # the label whose prompt is the very text

    # the served model's heads are selectable; a pair head takes the image and the text
    method = panel.get_by_label("Method")
    expect(method.locator("option")).to_have_count(3)  # zero-shot + itm + vqa
    method.select_option("itm")
    expect(panel.get_by_label("Image and text")).to_be_checked()
    expect(panel.get_by_label("Labels")).to_be_hidden()
    panel.get_by_label("Image file").set_input_files(red)
    panel.get_by_label("Text to classify").fill("a large red circle")
    panel.get_by_role("button", name="Classify").click()
    expect(panel.locator(".result")).to_contain_text("head itm")
    assert {label for label, _ in shown_bars(panel)} == {"match", "no_match"}


def test_ask_answers_a_question_about_a_dropped_image(playground: Playground) -> None:
    page = playground.open("ask")
    panel = page.get_by_role("tabpanel", name="Ask")
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dropped = new DataTransfer();
            dropped.items.add(new File([bytes], "green square.png", { type: "image/png" }));
            return dropped;
        }""",
        base64.b64encode(shape_png("green", "square")).decode("ascii"),
    )
    panel.locator(".picker").dispatch_event("drop", {"dataTransfer": transfer})
    expect(panel.get_by_role("img", name="green square.png")).to_be_visible()
    panel.get_by_label("Question").fill("what color is the square?")
    panel.get_by_role("button", name="Ask").click()
    expect(panel.locator(".top-label")).to_have_text("green")
    expect(panel.locator(".bars li")).to_have_count(5)
    playground.shot("ask")


def test_embed_summarises_vectors_and_maps_their_similarities(
    playground: Playground, server: ServeProcess, files: Any
) -> None:
    page = playground.open("embed")
    panel = page.get_by_role("tabpanel", name="Embed")
    texts = ["a large red circle", "a large blue square"]
    images = [
        files("red circle.png", shape_png("red")),
        files("blue square.png", shape_png("blue", "square")),
    ]
    panel.get_by_label("Texts, one per line").fill("\n".join(texts))
    panel.get_by_label("Image files").set_input_files(images)
    panel.get_by_role("button", name="Embed").click()
    expect(panel.locator("table.vectors tbody tr")).to_have_count(4)

    with server.client() as api:
        body = api.post(
            "/v1/embeddings",
            json={
                "input": [{"text": t} for t in texts] + [{"image": data_uri(p.read_bytes())} for p in images]
            },
        ).json()
    vectors = np.array([row["embedding"] for row in body["data"]])
    assert panel.locator("td.dimension").all_inner_texts() == [str(vectors.shape[1])] * 4
    assert panel.locator("td.norm").all_inner_texts() == [f"{n:.4f}" for n in np.linalg.norm(vectors, axis=1)]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    cells = panel.locator("table.heatmap tbody tr")
    shown = [cells.nth(i).locator("td").all_inner_texts() for i in range(4)]
    assert shown == [[f"{s:.3f}" for s in row] for row in similarity]
    # one joint space: each caption is closer to its own picture than to the other one
    assert similarity[0, 2] > similarity[0, 3] and similarity[1, 3] > similarity[1, 2]
    playground.shot("embed")


def test_models_lists_versions_with_the_manifests_evaluation(playground: Playground) -> None:
    page = playground.open("models")
    panel = page.get_by_role("tabpanel", name="Models")
    reference = "{}:{}".format(*BUNDLED)
    row = panel.locator(f'tr[data-model="{reference}"]')
    expect(row.locator(".badge")).to_have_text(["active", "serving"])
    expect(row.get_by_role("button", name=f"Activate {reference}")).to_have_count(0)  # already is
    manifest = json.loads(
        (
            Path(__file__).parents[3] / "model_store" / reference.replace(":", "/") / "manifest.json"
        ).read_text()
    )
    macro = manifest["metrics"]["eval"]["macro"]
    detail = panel.locator("#models-detail")
    for group in ("vision", "language", "multimodal", "overall"):
        expect(detail.locator(f'td[data-group="{group}"]')).to_have_text(f"{macro[group]:.3f}")
    detail.get_by_text(f"All {len(manifest['metrics']['eval']['scores'])} evaluation scores").click()
    expect(detail.get_by_role("row", name="vision/fashion_mnist_zero_shot/accuracy")).to_contain_text(
        f"{manifest['metrics']['eval']['scores']['vision/fashion_mnist_zero_shot/accuracy']:.3f}"
    )
    playground.shot("models")


def test_a_missing_or_wrong_key_explains_itself(playground: Playground, server: ServeProcess) -> None:
    playground.expect_http_errors(401)
    page = playground.open("classify", key=None)
    notice = page.locator("#notice")
    expect(notice).to_contain_text("This server needs an API key (401).")
    with server.client(key=None) as anonymous, server.client(key="wrong") as wrong:
        missing = anonymous.get("/v1/models").json()["error"]["message"]
        invalid = wrong.get("/v1/models").json()["error"]["message"]
    expect(notice).to_contain_text(missing)
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")

    panel = page.get_by_role("tabpanel", name="Classify")
    panel.get_by_role("button", name="Draw a sample scene").click()
    page.get_by_label("API key").fill("wrong")
    page.get_by_label("API key").press("Enter")
    panel.get_by_role("button", name="Classify").click()
    alert = panel.get_by_role("alert")
    expect(alert).to_contain_text("This server needs an API key (401).")
    expect(alert.locator(".message")).to_have_text(invalid)
    expect(alert).to_contain_text("API key field at the top of the page")
    alert.get_by_role("link", name="Go to the key field").click()
    expect(page.get_by_label("API key")).to_be_focused()
    playground.shot("error-401")

    page.get_by_label("API key").fill(API_KEY)
    page.get_by_label("API key").press("Enter")
    panel.get_by_role("button", name="Classify").click()
    expect(panel.locator(".top-label")).to_have_count(1)
    expect(alert).to_be_hidden()
    expect(notice).to_be_hidden()
    # kept for this tab: a reload keeps it, another tab starts without it
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(API_KEY)
    other = page.context.new_page()
    try:
        other.goto(f"{server.url}/ui/")
        expect(other.get_by_label("API key")).to_have_value("")
    finally:
        other.close()


@pytest.mark.parametrize(
    ("case", "fill"),
    [
        ("bad image", {"file": ("broken.png", b"this is text, not a PNG")}),
        ("no labels", {"Labels": " , "}),
        ("bad template", {"Template": "a photo of a label"}),
    ],
)
def test_an_api_error_is_shown_as_its_message(
    playground: Playground, server: ServeProcess, files: Any, case: str, fill: dict[str, Any]
) -> None:
    playground.expect_http_errors(400)
    page = playground.open("classify")
    panel = page.get_by_role("tabpanel", name="Classify")
    name, data = fill.get("file", ("red.png", shape_png("red")))
    image = files(name, data)
    panel.get_by_label("Image file").set_input_files(image)
    body: dict[str, Any] = {
        "input": {"image": data_uri(data)},
        "labels": COLORS,
        "template": "a photo of a {label}",
    }
    if "Labels" in fill:
        panel.get_by_label("Labels").fill(fill["Labels"])
        body["labels"] = []
    if "Template" in fill:
        panel.get_by_label("Template").fill(fill["Template"])
        body["template"] = fill["Template"]
    panel.get_by_role("button", name="Classify").click()
    with server.client() as api:
        response = api.post("/v1/classify", json=body)
    assert response.status_code == 400, (case, response.text)
    error = response.json()["error"]
    alert = panel.get_by_role("alert")
    expect(alert.locator(".message")).to_have_text(error["message"])
    expect(alert).to_contain_text(f"Error 400 ({error['code']})")
    expect(panel.locator(".bars")).to_have_count(0)
    if case == "bad image":
        playground.shot("error")


def test_the_page_works_on_a_narrow_screen(playground: Playground, files: Any) -> None:
    page = playground.page
    page.set_viewport_size({"width": 360, "height": 760})
    playground.open("classify")
    overflow = "document.documentElement.scrollWidth - window.innerWidth"
    for tab in ("Classify", "Ask", "Search", "Embed", "Models", "Fine-tune"):
        page.get_by_role("tab", name=tab).click()
        expect(page.get_by_role("tabpanel", name=tab)).to_be_visible()
        assert page.evaluate(overflow) <= 0, f"{tab} scrolls sideways at 360 px"
    page.get_by_role("tab", name="Classify").click()
    panel = page.get_by_role("tabpanel", name="Classify")
    panel.get_by_label("Image file").set_input_files(files("orange.png", shape_png("orange", "triangle")))
    panel.get_by_role("button", name="Classify").click()
    expect(panel.locator(".top-label")).to_have_text("orange")
    assert page.evaluate(overflow) <= 0
    button = panel.get_by_role("button", name="Classify").bounding_box()
    assert button is not None and button["x"] >= 0 and button["x"] + button["width"] <= 360
    playground.shot("narrow")


def test_keyboard_and_screen_reader_basics(playground: Playground) -> None:
    page = playground.open("classify")
    page.reload()  # the key stays (sessionStorage); the focus leaves its field
    # every form control has a name a screen reader can announce; every image has alt text
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, button")]
            .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || el.textContent.trim()))
            .map((el) => el.outerHTML)"""
    )
    assert unnamed == []
    assert page.evaluate("() => [...document.images].filter((img) => !img.hasAttribute('alt')).length") == 0
    assert page.evaluate("() => document.documentElement.lang") == "en"

    page.keyboard.press("Tab")  # the first stop is the skip link
    expect(page.get_by_role("link", name="Skip to the playground")).to_be_focused()

    # the tabs follow the WAI-ARIA pattern: arrows, Home, End; one tab stop
    classify = page.get_by_role("tab", name="Classify")
    classify.focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Ask")).to_be_focused()
    expect(page.get_by_role("tab", name="Ask")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tabpanel", name="Ask")).to_be_visible()
    expect(page.get_by_role("tabpanel", name="Classify")).to_be_hidden()
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="Fine-tune")).to_be_focused()
    page.keyboard.press("ArrowRight")  # wraps around
    expect(classify).to_be_focused()
    assert page.evaluate("() => location.hash") == "#classify"
    assert page.get_by_role("tab").evaluate_all("tabs => tabs.map((t) => t.tabIndex)") == [
        0,
        -1,
        -1,
        -1,
        -1,
        -1,
    ]

    # a result is announced (live region) and reached by keyboard: Enter in the form submits it
    panel = page.get_by_role("tabpanel", name="Classify")
    panel.get_by_role("button", name="Draw a sample scene").click()
    panel.get_by_label("Template").focus()
    page.keyboard.press("Enter")
    expect(panel.locator(".top-label")).to_have_count(1)
    assert panel.locator("#classify-result").get_attribute("aria-live") == "polite"
