// Ask: POST /v1/vqa, an image and a question -> ranked answers of the model's VQA head.

import { post } from "./api.js";
import { $, clear, h, onSubmit, percent, rankedBars } from "./dom.js";
import { imagePicker } from "./images.js";

export function initAsk() {
  const form = $("#ask-form");
  const errorBox = $("#ask-error");
  const result = $("#ask-result");
  const picker = imagePicker($("#ask-image"));

  onSubmit(form, errorBox, async () => {
    const [image] = await picker.images();
    if (!image) {
      throw new Error("Choose, drop or draw an image first.");
    }
    const question = $("#ask-question").value;
    clear(result);
    const body = await post("v1/vqa", {
      image: image.dataUri,
      question,
      top_k: Number($("#ask-top-k").value) || 5,
    });
    const [top] = body.answers;
    result.append(
      h(
        "p",
        { class: "verdict" },
        "Answer: ",
        h("strong", { class: "top-label", text: top.answer }),
        ` (${percent(top.score)})`,
      ),
      rankedBars(body.answers, { caption: `Answers to “${question}”`, labelKey: "answer" }),
      h("p", { class: "hint", text: `${body.model} · ${body.usage.prompt_tokens} tokens` }),
    );
  });
}
