"""The Search section in a real browser: collections, adding images and texts, search by text and by
image, the result grid (thumbnails, scores, metadata), deleting items and collections."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.service.helpers import data_uri
from tests.service.ui.conftest import COLORS, Playground, ServeProcess, shape_png


def hit_ids(panel: Any) -> list[str]:
    return panel.locator(".hit .hit-id").all_inner_texts()


def test_search_by_text_and_by_image_then_delete(
    playground: Playground, server: ServeProcess, files: Any
) -> None:
    name = "ui-shapes"
    images = {f"{color} circle.png": shape_png(color) for color in COLORS}
    texts = ["a photo of a sneaker", "a large red circle"]
    with server.client() as api:  # added through the API without thumbnails: hits show a placeholder
        assert api.post("/v1/collections", json={"name": name}).status_code == 201
        items = [
            {"id": i, "image": data_uri(png), "metadata": {"color": i.split()[0]}}
            for i, png in images.items()
        ]
        items += [{"id": t, "text": t} for t in texts]
        assert api.post(f"/v1/collections/{name}/items", json={"items": items}).status_code == 200
    page = playground.open("search")
    panel = page.get_by_role("tabpanel", name="Search")
    panel.get_by_label("Collection", exact=True).select_option(name)
    expect(panel.locator("#search-collection-info")).to_contain_text("8 items (6 images, 2 texts)")

    # by text, images only: the red circle comes first, with its score and metadata
    panel.get_by_label("Query text").fill("a red circle")
    panel.get_by_label("Only").select_option("image")
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(".hit")).to_have_count(6)
    with server.client() as api:
        expected = api.post(
            f"/v1/collections/{name}/search",
            json={"query": {"text": "a red circle"}, "top_k": 12, "filter": {"modality": "image"}},
        ).json()["data"]
    assert hit_ids(panel) == [hit["id"] for hit in expected]
    assert hit_ids(panel)[0] == "red circle.png"
    assert panel.locator(".hit .score .value").all_inner_texts() == [
        f"{hit['score']:.3f}" for hit in expected
    ]
    first = panel.locator(".hit").first
    expect(first.locator(".metadata")).to_contain_text("colorred")
    expect(first.get_by_role("img", name="Image red circle.png (no thumbnail stored)")).to_be_visible()
    playground.shot("search")

    # by image: the same picture is its own nearest neighbour
    panel.get_by_label("Image", exact=True).check()
    panel.get_by_label("Query image", exact=True).set_input_files(
        files("query.png", images["blue circle.png"])
    )
    panel.get_by_label("Only").select_option("")
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(".verdict")).to_contain_text("8 results for query.png")
    assert hit_ids(panel)[0] == "blue circle.png"
    expect(panel.locator(".hit .score .value").first).to_have_text("1.000")
    expect(panel.locator(".hit blockquote.text")).to_have_count(2)  # text hits show their text

    # delete one hit, then the collection
    panel.get_by_role("button", name="Delete red circle.png").click()
    expect(panel.locator('.hit[data-id="red circle.png"]')).to_have_count(0)
    expect(panel.locator("#search-collection-info")).to_contain_text("7 items (5 images, 2 texts)")
    with server.client() as api:
        assert api.get(f"/v1/collections/{name}/items/red circle.png").status_code == 404
    page.once("dialog", lambda dialog: dialog.accept())
    panel.get_by_role("button", name="Delete collection").click()
    expect(panel.locator("#search-add-status")).to_have_text(f"Deleted collection {name}.")
    with server.client() as api:
        assert name not in [c["name"] for c in api.get("/v1/collections").json()["data"]]


def test_create_a_collection_and_add_texts_from_the_page(
    playground: Playground, server: ServeProcess
) -> None:
    playground.expect_http_errors(400)
    page = playground.open("search")
    panel = page.get_by_role("tabpanel", name="Search")
    create = panel.get_by_role("button", name="Create")

    panel.get_by_label("New collection").fill("no spaces allowed")
    create.click()
    with server.client() as api:
        refused = api.post("/v1/collections", json={"name": "no spaces allowed"}).json()["error"]["message"]
    expect(panel.get_by_role("alert").locator(".message")).to_have_text(refused)

    panel.get_by_label("New collection").fill("ui-texts")
    create.click()
    expect(panel.get_by_label("Collection", exact=True)).to_have_value("ui-texts")
    panel.get_by_label("Texts to add, one per line").fill("a photo of a sneaker\na small green triangle\n")
    panel.get_by_label("Metadata for these items").fill("[1, 2]")
    panel.get_by_role("button", name="Add to collection").click()
    expect(panel.get_by_role("alert")).to_contain_text("Metadata must be a JSON object")
    panel.get_by_label("Metadata for these items").fill('{"source": "ui-test"}')
    panel.get_by_role("button", name="Add to collection").click()
    expect(panel.locator("#search-add-status")).to_have_text("ui-texts: 2 added, 0 updated.")
    expect(panel.get_by_label("Texts to add, one per line")).to_have_value("")

    panel.get_by_label("Query text").fill("a photo of a sneaker")
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(".hit")).to_have_count(2)
    assert hit_ids(panel)[0] == "a photo of a sneaker"
    expect(panel.locator(".hit").first.locator(".metadata")).to_contain_text("sourceui-test")


def test_images_added_from_the_page_come_back_as_thumbnails(
    playground: Playground, server: ServeProcess, files: Any
) -> None:
    """Needs the item thumbnails of the retrieval API (`"thumbnail": true` on add, a data URI on every
    hit): it passes once that API is in the server."""
    page = playground.open("search")
    panel = page.get_by_role("tabpanel", name="Search")
    panel.get_by_label("New collection").fill("ui-thumbnails")
    panel.get_by_role("button", name="Create").click()
    expect(panel.get_by_label("Collection", exact=True)).to_have_value("ui-thumbnails")
    chosen = [files(f"{color} square.png", shape_png(color, "square")) for color in COLORS[:4]]
    panel.get_by_label("Images to add", exact=True).set_input_files(chosen)  # several files at once
    expect(panel.get_by_role("list", name="Chosen images to add").get_by_role("img")).to_have_count(4)
    panel.get_by_role("button", name="Add to collection").click()
    expect(panel.locator("#search-add-status")).to_have_text("ui-thumbnails: 4 added, 0 updated.")

    panel.get_by_label("Query text").fill("a red square")
    panel.get_by_role("button", name="Search", exact=True).click()
    expect(panel.locator(".hit")).to_have_count(4)
    thumbnails = panel.locator(".hit img.thumb")
    expect(thumbnails).to_have_count(4)
    with server.client() as api:
        for i in range(4):
            src = thumbnails.nth(i).get_attribute("src") or ""
            assert src.startswith("data:image/"), src[:40]
            item_id = panel.locator(".hit .hit-id").nth(i).inner_text()
            stored = api.get(f"/v1/collections/ui-thumbnails/items/{item_id}").json()
            assert stored["thumbnail"] == src
            expect(thumbnails.nth(i)).to_have_attribute("alt", f"Thumbnail of {item_id}")
    assert page.evaluate(
        "() => [...document.querySelectorAll('.hit img.thumb')].every((i) => i.naturalWidth > 0)"
    )
    playground.shot("search")
