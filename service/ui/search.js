// Search: retrieval collections (/v1/collections). Create, choose and delete a collection; add
// images (kept with a server-side thumbnail) and texts; search by text or image; delete hits.

import { del, events, get, post } from "./api.js";
import { $, actionButton, busy, clear, fixed, h, hideError, onSubmit, showError } from "./dom.js";
import { imagePicker } from "./images.js";

// Adds are sent in chunks, well below the server's default limits (256 items, 32 MiB a request).
const CHUNK_ITEMS = 32;
const CHUNK_CHARS = 8 * 1024 * 1024;

/** A stable id for a text item: the text itself when short, else its start plus a hash. */
function textId(text) {
  if (text.length <= 200) return text;
  let hash = 0x811c9dc5; // FNV-1a, 32 bits
  for (const char of text) hash = Math.imul(hash ^ char.codePointAt(0), 0x01000193) >>> 0;
  return `${text.slice(0, 180)}… #${hash.toString(16).padStart(8, "0")}`;
}

function chunks(items) {
  const out = [];
  let current = [];
  let chars = 0;
  for (const item of items) {
    const size = (item.image ?? item.text).length;
    if (current.length && (current.length >= CHUNK_ITEMS || chars + size > CHUNK_CHARS)) {
      out.push(current);
      current = [];
      chars = 0;
    }
    current.push(item);
    chars += size;
  }
  if (current.length) out.push(current);
  return out;
}

function metadataOf(text) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (problem) {
    throw new Error(`Metadata is not valid JSON: ${problem.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error('Metadata must be a JSON object, e.g. {"source": "playground"}.');
  }
  return value;
}

const shown = (value) => {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
};

export function initSearch() {
  const select = $("#search-collection");
  const info = $("#search-collection-info");
  const deleteButton = $("#search-delete-collection");
  const errorBox = $("#search-error");
  const result = $("#search-result");
  const addStatus = $("#search-add-status");
  const addPicker = imagePicker($("#search-add-images"));
  const queryPicker = imagePicker($("#search-query-image"));
  const searchForm = $("#search-form");
  const byRadios = [...searchForm.querySelectorAll('input[name="search-by"]')];
  let collections = [];

  const selected = () => collections.find((c) => c.name === select.value) ?? null;

  function describeSelected() {
    const collection = selected();
    deleteButton.disabled = !collection;
    if (!collection) {
      info.textContent = collections.length ? "" : "No collection yet: create one below.";
      return;
    }
    const counts = collection.counts ?? {};
    info.textContent =
      `${collection.count} items (${counts.image ?? 0} images, ${counts.text ?? 0} texts) · vectors of ` +
      `${collection.model}` +
      (collection.searchable ? "" : " · not searchable while another model version is served");
  }

  async function loadCollections(choose = select.value) {
    try {
      collections = (await get("v1/collections")).data;
    } catch (problem) {
      collections = [];
      if (problem.status !== 401) showError(errorBox, problem); // a 401: the page notice explains
    }
    clear(select);
    if (!collections.length) select.append(h("option", { value: "", text: "— none yet —" }));
    for (const collection of collections) {
      select.append(
        h("option", { value: collection.name, text: `${collection.name} (${collection.count})` }),
      );
    }
    select.value = collections.some((c) => c.name === choose) ? choose : (collections[0]?.name ?? "");
    describeSelected();
  }

  function requireCollection() {
    if (!selected()) throw new Error("Create or choose a collection first.");
    return selected().name;
  }

  onSubmit($("#search-create"), errorBox, async () => {
    const name = $("#search-new-name").value.trim();
    await post("v1/collections", { name, description: "created in the playground" });
    await loadCollections(name);
    addStatus.textContent = `Created collection ${name}.`;
  });

  deleteButton.addEventListener("click", () => {
    const name = select.value;
    if (!name || !window.confirm(`Delete the collection “${name}” and all its items?`)) return;
    busy(deleteButton, errorBox, async () => {
      await del(`v1/collections/${encodeURIComponent(name)}`);
      clear(result);
      await loadCollections();
      addStatus.textContent = `Deleted collection ${name}.`;
    });
  });

  select.addEventListener("change", describeSelected);

  onSubmit($("#search-add"), errorBox, async () => {
    const name = requireCollection();
    const metadata = metadataOf($("#search-add-metadata").value);
    const images = await addPicker.images();
    const texts = $("#search-add-texts")
      .value.split("\n")
      .map((t) => t.trim())
      .filter(Boolean);
    if (!images.length && !texts.length) {
      throw new Error("Choose or drop images, or type texts, to add.");
    }
    const items = [
      ...images.map((image) => ({
        id: image.name,
        image: image.dataUri,
        thumbnail: true, // the server keeps a small copy, so hits can show the picture
        metadata: { file: image.name, ...metadata },
      })),
      ...texts.map((text) => ({ id: textId(text), text, metadata })),
    ];
    let added = 0;
    let updated = 0;
    const parts = chunks(items);
    try {
      for (const [index, part] of parts.entries()) {
        addStatus.textContent = `Adding ${part.length} items (request ${index + 1} of ${parts.length})…`;
        const body = await post(`v1/collections/${encodeURIComponent(name)}/items`, { items: part });
        added += body.added;
        updated += body.updated;
      }
    } finally {
      addStatus.textContent =
        `${name}: ${added} added, ${updated} updated` +
        (added + updated < items.length ? ` of ${items.length}.` : ".");
      await loadCollections(name);
    }
    addPicker.clear();
    $("#search-add-texts").value = "";
  });

  byRadios.forEach((radio) =>
    radio.addEventListener("change", () => {
      const by = byRadios.find((r) => r.checked).value;
      searchForm.querySelector('[data-for="text"]').hidden = by !== "text";
      searchForm.querySelector('[data-for="image"]').hidden = by !== "image";
    }),
  );

  function hitCard(hit, rank, collection) {
    let media;
    if (typeof hit.thumbnail === "string" && hit.thumbnail.startsWith("data:image/")) {
      media = h("img", { class: "thumb", src: hit.thumbnail, alt: `Thumbnail of ${hit.id}` });
    } else if (hit.modality === "text") {
      media = h("blockquote", { class: "thumb text", text: hit.text ?? hit.id });
    } else {
      media = h(
        "div",
        { class: "thumb placeholder", role: "img", "aria-label": `Image ${hit.id} (no thumbnail stored)` },
        h("span", { text: hit.id }),
      );
    }
    const entries = Object.entries(hit.metadata ?? {});
    const card = h(
      "li",
      { class: "hit", "data-id": hit.id },
      media,
      h(
        "div",
        { class: "about" },
        h(
          "p",
          { class: "hit-title" },
          h("span", { class: "rank", text: `#${rank + 1}` }),
          " ",
          h("strong", { class: "hit-id", text: hit.id }),
        ),
        h(
          "p",
          { class: "score" },
          "score ",
          h("span", { class: "value", text: fixed(hit.score) }),
          ` · ${hit.modality}`,
        ),
        entries.length
          ? h(
              "dl",
              { class: "metadata" },
              entries.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: shown(v) })]),
            )
          : "",
      ),
    );
    const remove = actionButton(
      { class: "danger small", "aria-label": `Delete ${hit.id}`, text: "Delete" },
      errorBox,
      async () => {
        await del(`v1/collections/${encodeURIComponent(collection)}/items/${encodeURIComponent(hit.id)}`);
        card.remove();
        addStatus.textContent = `Deleted ${hit.id} from ${collection}.`;
        await loadCollections(collection);
      },
    );
    card.querySelector(".about").append(remove);
    return card;
  }

  onSubmit(searchForm, errorBox, async () => {
    const name = requireCollection();
    const by = byRadios.find((r) => r.checked).value;
    let query, what;
    if (by === "image") {
      const [image] = await queryPicker.images();
      if (!image) {
        throw new Error("Choose, drop or draw a query image first.");
      }
      query = { image: image.dataUri };
      what = image.name;
    } else {
      query = { text: $("#search-query").value };
      what = `“${query.text}”`;
    }
    const body = { query, top_k: Number($("#search-top-k").value) || 12 };
    const modality = $("#search-modality").value;
    if (modality) body.filter = { modality };
    clear(result);
    const found = await post(`v1/collections/${encodeURIComponent(name)}/search`, body);
    hideError(errorBox);
    result.append(
      h("p", {
        class: "verdict",
        text: `${found.data.length} results for ${what} in ${name} (${found.model})`,
      }),
      h(
        "ul",
        { class: "hits", "aria-label": "Search results" },
        found.data.map((hit, rank) => hitCard(hit, rank, name)),
      ),
    );
  });

  events.addEventListener("models-changed", () => loadCollections()); // searchable follows the model
  loadCollections();
}
