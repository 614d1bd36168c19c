// Models: GET /v1/models (every version; which is active and serving), GET /v1/models/{id} (the
// figures of its manifest), POST /v1/models/{id}/activate.

import { events, get, post } from "./api.js";
import { $, actionButton, clear, fixed, h, hideError, showError } from "./dom.js";
import { modelCards, modelsChanged } from "./models-state.js";

const GROUPS = ["vision", "language", "multimodal", "overall"];
const BASELINES = {
  random_init: "random weights",
  trivial: "majority / chance",
  feature: "raw pixels / TF-IDF",
};

const date = (epoch) => (epoch ? new Date(epoch * 1000).toISOString().slice(0, 16).replace("T", " ") : "–");

function evaluation(evalMetrics) {
  const baselines = Object.keys(BASELINES).filter((key) => evalMetrics.baselines_macro?.[key]);
  const macro = h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "figures" },
      h("caption", { text: `Evaluation, macro averages (${evalMetrics.runtime ?? "runtime not recorded"})` }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col", text: "Group" }),
          h("th", { scope: "col", text: "This version" }),
          baselines.map((key) => h("th", { scope: "col", text: BASELINES[key] })),
        ),
      ),
      h(
        "tbody",
        {},
        GROUPS.filter((group) => group in (evalMetrics.macro ?? {})).map((group) =>
          h(
            "tr",
            {},
            h("th", { scope: "row", text: group }),
            h("td", { class: "num", "data-group": group, text: fixed(evalMetrics.macro[group]) }),
            baselines.map((key) =>
              h("td", { class: "num", text: fixed(evalMetrics.baselines_macro[key][group] ?? NaN) }),
            ),
          ),
        ),
      ),
    ),
  );
  const scores = Object.entries(evalMetrics.scores ?? {});
  return h(
    "div",
    { class: "evaluation" },
    macro,
    scores.length
      ? h(
          "details",
          {},
          h("summary", { text: `All ${scores.length} evaluation scores` }),
          h(
            "div",
            { class: "scroll" },
            h(
              "table",
              { class: "figures" },
              h(
                "tbody",
                {},
                scores.map(([name, value]) =>
                  h(
                    "tr",
                    {},
                    h("th", { scope: "row", text: name }),
                    h("td", { class: "num", text: fixed(value) }),
                  ),
                ),
              ),
            ),
          ),
        )
      : "",
  );
}

function fineTuning(finetune) {
  const before = finetune.validation_before;
  const after = finetune.validation_after;
  return h(
    "p",
    { class: "finetune-figures" },
    h("strong", { text: "Fine-tuning: " }),
    `validation ${finetune.metric} ${before === null ? "–" : fixed(before)} (${finetune.before_method}) → `,
    h("strong", { text: after === null ? "–" : fixed(after) }),
  );
}

export function initModels() {
  const tbody = $("#models-table tbody");
  const errorBox = $("#models-error");
  const status = $("#models-status");
  const detail = $("#models-detail");
  let pinned = null; // a version whose Details the user asked for; else the serving one is shown

  async function showDetail(id) {
    const card = await get(`v1/models/${encodeURIComponent(id)}`);
    const metrics = card.metrics ?? {};
    clear(detail).append(
      h("h3", { text: `${card.id}${card.serving ? " (serving)" : ""}` }),
      metrics.eval ? evaluation(metrics.eval) : "",
      metrics.finetune ? fineTuning(metrics.finetune) : "",
      metrics.eval || metrics.finetune
        ? ""
        : h("p", {
            class: "hint",
            text: "No evaluation figures in this version's manifest (run momo eval).",
          }),
      h(
        "details",
        {},
        h("summary", { text: "Every metric in the manifest (JSON)" }),
        h("pre", { text: JSON.stringify(metrics, null, 2) }),
      ),
    );
  }

  function row(card) {
    const actions = h("td", { class: "row-actions" });
    const details = actionButton(
      { class: "secondary small", "aria-label": `Details of ${card.id}`, text: "Details" },
      errorBox,
      () => {
        pinned = card.id;
        return showDetail(card.id);
      },
    );
    actions.append(details);
    if (!(card.active && card.serving)) {
      const activate = actionButton(
        { class: "small", "aria-label": `Activate ${card.id}`, text: "Activate" },
        errorBox,
        async () => {
          status.textContent = `Activating ${card.id}…`;
          const done = await post(`v1/models/${encodeURIComponent(card.id)}/activate`, {});
          status.textContent =
            `Now serving ${done.model.id}` +
            (done.previous && done.changed ? ` (was ${done.previous}).` : ".");
          pinned = null;
          modelsChanged();
        },
      );
      actions.append(" ", activate);
    }
    const badges = [
      card.active ? h("span", { class: "badge active", text: "active" }) : "",
      card.serving ? h("span", { class: "badge serving", text: "serving" }) : "",
    ];
    return h(
      "tr",
      { "data-model": card.id },
      h("th", { scope: "row", text: card.id }),
      h("td", { class: "badges" }, badges),
      h("td", { text: card.runtime ? `${card.runtime} · ${card.device}` : "–" }),
      h("td", { class: "num", text: card.embedding_dim ?? "–" }),
      h("td", { text: Object.keys(card.heads).join(", ") || "–" }),
      h("td", { text: card.parent ?? "–" }),
      h("td", { text: date(card.created) }),
      actions,
    );
  }

  async function load() {
    hideError(errorBox);
    let cards;
    try {
      cards = await modelCards();
    } catch (problem) {
      showError(errorBox, problem);
      return;
    }
    clear(tbody).append(...cards.map(row));
    const serving = cards.find((card) => card.serving);
    const id = cards.some((card) => card.id === pinned) ? pinned : serving?.id;
    if (id) await showDetail(id).catch((problem) => showError(errorBox, problem));
  }

  $("#models-refresh").addEventListener("click", modelsChanged);
  events.addEventListener("models-changed", load);
  load();
}
