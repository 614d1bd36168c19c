// Embed: POST /v1/embeddings for several texts and images at once -> a summary of each vector and
// the cosine-similarity matrix of all of them as a heat map.

import { post } from "./api.js";
import { $, clear, fixed, h, onSubmit } from "./dom.js";
import { imagePicker } from "./images.js";

const FIRST_VALUES = 6;

const norm = (v) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0));
const cosine = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0) / (norm(a) * norm(b) || 1);

function summaryTable(inputs, vectors) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "vectors" },
      h("caption", { text: "Vectors" }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["#", "Input", "Dimension", "Norm", `First ${FIRST_VALUES} values`].map((t) =>
            h("th", { scope: "col", text: t }),
          ),
        ),
      ),
      h(
        "tbody",
        {},
        inputs.map((input, i) =>
          h(
            "tr",
            {},
            h("th", { scope: "row", text: String(i + 1) }),
            h("td", { text: `${input.kind}: ${input.label}` }),
            h("td", { class: "num dimension", text: String(vectors[i].length) }),
            h("td", { class: "num norm", text: fixed(norm(vectors[i]), 4) }),
            h("td", {
              class: "values",
              text:
                vectors[i]
                  .slice(0, FIRST_VALUES)
                  .map((x) => fixed(x, 4))
                  .join(", ") + ", …",
            }),
          ),
        ),
      ),
    ),
  );
}

function heatMap(inputs, vectors) {
  const short = (input, i) =>
    `${i + 1} ${input.label.length > 24 ? `${input.label.slice(0, 23)}…` : input.label}`;
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "heatmap" },
      h("caption", { text: "Cosine similarity" }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("td"),
          inputs.map((input, j) => h("th", { scope: "col", title: input.label, text: short(input, j) })),
        ),
      ),
      h(
        "tbody",
        {},
        inputs.map((input, i) =>
          h(
            "tr",
            {},
            h("th", { scope: "row", title: input.label, text: short(input, i) }),
            vectors.map((_, j) => {
              const value = cosine(vectors[i], vectors[j]);
              const cell = h("td", { class: "num", text: fixed(value, 3) });
              cell.style.setProperty("--sim", String(value)); // colour from -1 (blue) to 1 (red)
              return cell;
            }),
          ),
        ),
      ),
    ),
  );
}

export function initEmbed() {
  const form = $("#embed-form");
  const errorBox = $("#embed-error");
  const result = $("#embed-result");
  const picker = imagePicker($("#embed-images"));

  onSubmit(form, errorBox, async () => {
    const texts = $("#embed-texts")
      .value.split("\n")
      .map((t) => t.trim())
      .filter(Boolean);
    const images = await picker.images();
    const inputs = [
      ...texts.map((text) => ({ kind: "text", label: text, item: { text } })),
      ...images.map((image) => ({ kind: "image", label: image.name, item: { image: image.dataUri } })),
    ];
    if (!inputs.length) {
      throw new Error("Type a text or choose an image to embed.");
    }
    clear(result);
    const body = await post("v1/embeddings", { input: inputs.map((input) => input.item) });
    const vectors = body.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
    result.append(
      h("p", {
        class: "verdict",
        text:
          `${inputs.length} inputs → ${vectors[0].length}-dimensional vectors ` +
          `(${body.model}, ${body.usage.prompt_tokens} tokens)`,
      }),
      summaryTable(inputs, vectors),
      inputs.length > 1 ? heatMap(inputs, vectors) : "",
    );
  });
}
