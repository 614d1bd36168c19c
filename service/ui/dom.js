// Small DOM helpers shared by the sections: an element builder (text only, never HTML from the
// server), error display, busy buttons, ranked bars and number formats.

/** h("p", {class: "hint", text: "..."}, child, ...): attributes, `text`, `on<Event>` listeners. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2).toLowerCase(), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : String(child));
    }
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/**
 * What the user reads for a failure: the API's message (with what to do about a 401), or the message
 * of an Error the page threw itself (a check before a request, e.g. "choose an image first").
 */
export function describe(error) {
  if (error.status === undefined) return { title: "", message: error.message, advice: "" };
  if (error.status === 401) {
    return {
      title: "This server needs an API key (401).",
      message: error.message,
      advice:
        "Enter one of the server's keys (MOMO_API_KEYS) in the API key field at the top of the page; " +
        "it is kept in this browser tab only.",
    };
  }
  const where = error.status ? `Error ${error.status}${error.code ? ` (${error.code})` : ""}` : "Error";
  return { title: `${where}:`, message: error.message, advice: "" };
}

const keyLink = () =>
  h("a", {
    href: "#api-key",
    text: "Go to the key field",
    onClick: (event) => {
      event.preventDefault(); // focus the field; the hash keeps naming the open section
      document.getElementById("api-key").focus();
    },
  });

/** Show `error` in a role="alert" box. */
export function showError(box, error) {
  const { title, message, advice } = describe(error);
  clear(box).append(
    title ? h("strong", { text: title }) : "",
    title ? " " : "",
    h("span", { class: "message", text: message }),
    advice ? h("span", { class: "advice" }, advice, " ", keyLink()) : "",
  );
  box.hidden = false;
}

export function hideError(box) {
  box.hidden = true;
  clear(box);
}

/** Run `work` with `button` disabled and marked busy; errors land in `errorBox`. */
export async function busy(button, errorBox, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  if (errorBox) hideError(errorBox);
  try {
    return await work();
  } catch (error) {
    if (!errorBox) throw error;
    showError(errorBox, error);
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** A button whose click runs `work` with the button busy and errors in `errorBox`. */
export function actionButton(props, errorBox, work) {
  const button = h("button", { type: "button", ...props });
  button.addEventListener("click", () => busy(button, errorBox, work));
  return button;
}

/** Wire a form: submitting it runs `work` with its submit button busy and errors in `errorBox`. */
export function onSubmit(form, errorBox, work) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form.querySelector('button[type="submit"]'), errorBox, work);
  });
}

export const percent = (p) => `${(100 * p).toFixed(1)} %`;
export const fixed = (x, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : "–");

/** A ranked list of {label, score} as horizontal bars; the numbers are text, the bars decoration. */
export function rankedBars(entries, { caption, format = percent, labelKey = "label" }) {
  const best = Math.max(...entries.map((e) => e.score), 1e-9);
  return h(
    "figure",
    { class: "bars" },
    h("figcaption", { text: caption }),
    h(
      "ol",
      {},
      entries.map((entry, rank) => {
        const bar = h("span", { class: "bar", "aria-hidden": "true" }, h("span", { class: "fill" }));
        bar.firstChild.style.setProperty("--share", String(Math.max(0, entry.score) / best));
        return h(
          "li",
          { class: rank === 0 ? "top" : undefined },
          h("span", { class: "label", text: entry[labelKey] }),
          bar,
          h("span", { class: "value", text: format(entry.score) }),
        );
      }),
    ),
  );
}

/** Label lists typed by people: one per line when there are several lines, else comma-separated. */
export function parseList(text) {
  const parts = text.includes("\n") ? text.split("\n") : text.split(",");
  return parts.map((part) => part.trim()).filter(Boolean);
}
