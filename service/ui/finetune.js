// Fine-tune: upload a dataset (POST /v1/files), start a job (POST /v1/fine-tunes), follow it by
// polling GET /v1/fine-tunes/{id} (state, progress, metrics, events), then activate the version it
// registered (POST /v1/models/{id}/activate). Cancel: POST /v1/fine-tunes/{id}/cancel.

import { get, events, post } from "./api.js";
import { $, actionButton, clear, fixed, h, hideError, onSubmit, percent, showError } from "./dom.js";
import { modelCards, modelsChanged } from "./models-state.js";

const POLL_MS = 1000;
const FINISHED = ["succeeded", "failed", "cancelled"];
const FORMATS = {
  image_classification: "A .zip of an image folder: one sub-folder per class (cat/1.jpg, dog/2.jpg, …).",
  text_classification: 'A .jsonl file of {"text": …, "label": …} lines.',
  retrieval: 'A .zip of a .jsonl of {"image": …, "text": …} lines with its images.',
  vqa: 'A .zip of a .jsonl of {"image": …, "question": …, "answer": …} lines with its images.',
};

const number = (selector) => ($(selector).value === "" ? null : Number($(selector).value));
const shortId = (id) => (id.length > 18 ? `${id.slice(0, 16)}…` : id);

function hyperparameters() {
  const values = {
    epochs: number("#finetune-epochs"),
    batch_size: number("#finetune-batch-size"),
    learning_rate: number("#finetune-learning-rate"),
    max_steps: number("#finetune-max-steps"),
    freeze_encoder: $("#finetune-freeze").checked,
  };
  // a field left empty is not sent: the server's default applies
  return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== null));
}

export function initFineTune() {
  const form = $("#finetune-form");
  const errorBox = $("#finetune-error");
  const view = $("#finetune-job");
  const jobsBody = $("#finetune-jobs tbody");
  const task = $("#finetune-task");
  const base = $("#finetune-model");
  let following = null; // the id of the job shown; a poll for another id stops

  const describeTask = () => ($("#finetune-format").textContent = FORMATS[task.value]);

  async function loadBases() {
    const chosen = base.value;
    let cards = [];
    try {
      cards = await modelCards();
    } catch {
      return; // the page notice explains (e.g. a missing key)
    }
    clear(base).append(h("option", { value: "active", text: "the active version" }));
    cards.forEach((card) => base.append(h("option", { value: card.id, text: card.id })));
    base.value = [...base.options].some((o) => o.value === chosen) ? chosen : "active";
  }

  async function loadJobs() {
    let page;
    try {
      page = await get("v1/fine-tunes?limit=10");
    } catch {
      return;
    }
    if (!page.data.length) {
      clear(jobsBody).append(
        h("tr", {}, h("td", { colspan: "6", class: "hint", text: "No fine-tune jobs yet." })),
      );
      return;
    }
    clear(jobsBody).append(
      ...page.data.map((job) => {
        const follow = h("button", {
          type: "button",
          class: "secondary small",
          "aria-label": `Follow ${job.id}`,
          text: "Follow",
          onClick: () => show(job.id),
        });
        return h(
          "tr",
          {},
          h("th", { scope: "row", title: job.id, text: shortId(job.id) }),
          h("td", { text: job.task }),
          h("td", { text: job.state }),
          h("td", { class: "num", text: percent(job.state === "succeeded" ? 1 : job.progress.fraction) }),
          h("td", { text: job.result_model ?? "–" }),
          h("td", {}, follow),
        );
      }),
    );
  }

  /** The job card's parts, built once per job and updated in place (focus stays where it is). */
  function skeleton(id) {
    const progress = h("progress", { id: "finetune-progress", max: "1", "aria-label": `Progress of ${id}` });
    const parts = {
      state: h("strong", { class: "job-state" }),
      attempts: h("span"),
      progress,
      step: h("span", { class: "job-step" }),
      metrics: h("dl", { class: "metrics" }),
      events: h("ol", { class: "events" }),
      outcome: h("div", { class: "job-outcome" }),
      cancel: actionButton({ class: "danger small", text: "Cancel job" }, errorBox, async () =>
        update(parts, await post(`v1/fine-tunes/${encodeURIComponent(id)}/cancel`, {})),
      ),
    };
    clear(view).append(
      h("h3", {}, "Job ", h("code", { text: id })),
      h("p", {}, "State: ", parts.state, parts.attempts, " ", parts.cancel),
      h("div", { class: "progress-row" }, progress, parts.step),
      parts.metrics,
      parts.outcome,
      h("details", { open: true }, h("summary", { text: "Events" }), parts.events),
    );
    view.hidden = false;
    return parts;
  }

  function update(parts, job) {
    const done = FINISHED.includes(job.state);
    parts.state.textContent = job.state;
    parts.state.dataset.state = job.state;
    parts.attempts.textContent = job.attempts > 1 ? ` (attempt ${job.attempts})` : "";
    parts.cancel.hidden = done || job.cancel_requested;
    const { step, total_steps: total, fraction } = job.progress;
    if (job.state === "succeeded") parts.progress.value = 1;
    else if (total) parts.progress.value = fraction;
    else parts.progress.removeAttribute("value"); // indeterminate until the worker knows the steps
    parts.step.textContent = total
      ? `step ${step} of ${total} (${percent(job.state === "succeeded" ? 1 : fraction)})`
      : job.state === "queued"
        ? "waiting for a worker"
        : "";
    const running = job.metrics.running ?? {};
    const shown = Object.entries(running).filter(([, v]) => typeof v === "number");
    clear(parts.metrics).append(
      ...shown.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: fixed(v, 4) }))),
    );
    clear(parts.events).append(
      ...(job.events ?? []).slice(-8).map((e) => h("li", { class: e.level, text: e.message })),
    );
    if (job.state === "succeeded" && !parts.outcome.dataset.done) {
      parts.outcome.dataset.done = "true";
      const note = h("span", { class: "hint", role: "status" });
      const activate = actionButton({ text: `Activate ${job.result_model}` }, errorBox, async () => {
        const done = await post(`v1/models/${encodeURIComponent(job.result_model)}/activate`, {});
        note.textContent = `Now serving ${done.model.id}.`;
        activate.hidden = true; // done; the Models section switches versions from here on
        modelsChanged();
      });
      const m = job.metrics;
      clear(parts.outcome).append(
        h(
          "p",
          { class: "job-result" },
          "New version ",
          h("strong", { class: "result-model", text: job.result_model }),
          m.metric ? ` · validation ${m.metric} ${fixed(m.before ?? NaN)} → ${fixed(m.after ?? NaN)}` : "",
        ),
        h("p", {}, activate, note),
      );
      modelsChanged(); // a new version is in the store
    } else if (job.state === "failed" && job.error) {
      clear(parts.outcome).append(
        h(
          "p",
          { class: "error", role: "alert" },
          h("strong", { text: `Failed (${job.error.code}): ` }),
          job.error.message,
        ),
      );
    }
    return done;
  }

  async function show(id) {
    following = id;
    hideError(errorBox);
    const parts = skeleton(id);
    for (;;) {
      let job;
      try {
        job = await get(`v1/fine-tunes/${encodeURIComponent(id)}`);
      } catch (problem) {
        if (following === id) showError(errorBox, problem);
        return;
      }
      if (following !== id) return;
      if (update(parts, job)) break;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      if (following !== id) return;
    }
    loadJobs();
  }

  onSubmit(form, errorBox, async () => {
    const file = $("#finetune-file").files[0];
    if (!file) {
      throw new Error("Choose a dataset file (.jsonl or .zip) first.");
    }
    const upload = new FormData();
    upload.append("file", file, file.name);
    upload.append("purpose", "fine-tune");
    const stored = await post("v1/files", upload);
    const request = {
      task: task.value,
      model: base.value,
      training_file: stored.id,
      hyperparameters: hyperparameters(),
    };
    const head = $("#finetune-head").value.trim();
    if (head) request.head = head;
    const job = await post("v1/fine-tunes", request);
    loadJobs();
    show(job.id);
  });

  task.addEventListener("change", describeTask);
  events.addEventListener("models-changed", () => {
    loadBases();
    loadJobs();
  });
  describeTask();
  loadBases();
  loadJobs();
}
