// Classify: POST /v1/classify, zero-shot over the user's labels or a head of the served model.

import { events, post } from "./api.js";
import { $, clear, h, onSubmit, parseList, percent, rankedBars } from "./dom.js";
import { imagePicker } from "./images.js";
import { servingCard } from "./models-state.js";

export function initClassify() {
  const form = $("#classify-form");
  const method = $("#classify-method");
  const errorBox = $("#classify-error");
  const result = $("#classify-result");
  const picker = imagePicker($("#classify-image"));
  const kinds = [...form.querySelectorAll('input[name="classify-kind"]')];
  let heads = {};

  const kind = () => kinds.find((radio) => radio.checked).value;

  function showInputs() {
    const current = kind();
    form.querySelector('[data-for="image"]').hidden = current === "text";
    form.querySelector('[data-for="text"]').hidden = current === "image";
  }

  function onMethod() {
    const head = heads[method.value];
    $("#classify-zero-shot").hidden = Boolean(head);
    for (const radio of kinds) {
      radio.disabled = head ? radio.value !== head.input : radio.value === "pair";
      if (head) radio.checked = radio.value === head.input;
    }
    if (!head && kind() === "pair") kinds[0].checked = true;
    showInputs();
  }

  async function loadHeads() {
    const selected = method.value;
    try {
      heads = (await servingCard())?.heads ?? {};
    } catch {
      heads = {}; // shown by the page notice (e.g. a 401); zero-shot stays usable
    }
    clear(method).append(h("option", { value: "", text: "Zero-shot over your labels" }));
    for (const [name, head] of Object.entries(heads)) {
      const inputs = head.input === "pair" ? "image + text" : head.input;
      method.append(
        h("option", { value: name, text: `Head "${name}" (${inputs} → ${head.num_labels} labels)` }),
      );
    }
    method.value = selected in heads ? selected : "";
    onMethod();
  }

  /** The request's input for the chosen kind; null while an image is needed and none is chosen. */
  async function inputOf(current) {
    const text = $("#classify-text").value;
    if (current === "text") return { text };
    const [image] = await picker.images();
    if (!image) return null;
    return current === "pair" ? { image: image.dataUri, text } : { image: image.dataUri };
  }

  function render(body, input) {
    const ranked = body.data[0].labels;
    const top = ranked[0];
    const what = input.image ? "image" : "text";
    clear(result).append(
      h(
        "p",
        { class: "verdict" },
        "Top label: ",
        h("strong", { class: "top-label", text: top.label }),
        ` (${percent(top.score)})`,
      ),
      rankedBars(ranked, { caption: `Probabilities for the ${what}` }),
      h(
        "p",
        { class: "hint" },
        `${body.model} · ${body.method}`,
        body.template ? ` · template “${body.template}”` : "",
        body.head ? ` · head ${body.head}` : "",
        ` · ${body.usage.prompt_tokens} tokens`,
      ),
    );
  }

  kinds.forEach((radio) => radio.addEventListener("change", showInputs));
  method.addEventListener("change", onMethod);
  onSubmit(form, errorBox, async () => {
    const input = await inputOf(kind());
    if (!input) {
      throw new Error("Choose, drop or draw an image first.");
    }
    const head = method.value;
    const body = head
      ? { input, head }
      : { input, labels: parseList($("#classify-labels").value), template: $("#classify-template").value };
    clear(result);
    render(await post("v1/classify", body), input);
  });
  events.addEventListener("models-changed", loadHeads);
  showInputs();
  loadHeads();
}
