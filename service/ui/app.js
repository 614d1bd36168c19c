// The playground's entry point: the tabs, the API key field, the server status line and the page
// notice for a missing or wrong key; each section wires itself (one module per section).

import { apiKey, events, get, setApiKey } from "./api.js";
import { $, clear, h, describe } from "./dom.js";
import { modelsChanged } from "./models-state.js";
import { initClassify } from "./classify.js";
import { initAsk } from "./ask.js";
import { initSearch } from "./search.js";
import { initEmbed } from "./embed.js";
import { initModels } from "./models.js";
import { initFineTune } from "./finetune.js";

/** WAI-ARIA tabs: arrow keys, Home and End move between tabs; the URL hash names the open one. */
function initTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab, { focus = false, remember = true } = {}) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    if (remember) history.replaceState(null, "", `#${tab.id.slice("tab-".length)}`);
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
      if (!(event.key in moves)) return;
      event.preventDefault();
      select(tabs[(moves[event.key] + tabs.length) % tabs.length], { focus: true });
    });
  });
  const fromHash = () => tabs.find((tab) => tab.id === `tab-${location.hash.slice(1)}`);
  select(fromHash() ?? tabs[0], { remember: false });
  window.addEventListener("hashchange", () => fromHash() && select(fromHash(), { remember: false }));
}

function initKey() {
  const field = $("#api-key");
  const notice = $("#notice");
  field.value = apiKey();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the field: "change" below has stored the key
  });
  field.addEventListener("change", () => {
    setApiKey(field.value);
    field.removeAttribute("aria-invalid");
    notice.hidden = true;
    modelsChanged(); // what failed without a key loads now
  });
  events.addEventListener("unauthorized", (event) => {
    const { title, message, advice } = describe(event.detail);
    field.setAttribute("aria-invalid", "true");
    clear(notice).append(
      h("strong", { text: title }),
      " ",
      advice,
      " ",
      h("span", { class: "message", text: `(The server said: ${message})` }),
    );
    notice.hidden = false;
  });
  events.addEventListener("authorized", () => {
    field.removeAttribute("aria-invalid");
    notice.hidden = true;
  });
}

async function showServerStatus() {
  const status = $("#server-status");
  try {
    const ready = await get("ready");
    status.textContent = `Serving ${ready.model} (${ready.runtime}, ${ready.device})`;
  } catch (problem) {
    status.textContent = `Not ready: ${problem.message}`;
  }
}

initTabs();
initKey();
initClassify();
initAsk();
initSearch();
initEmbed();
initModels();
initFineTune();
showServerStatus();
events.addEventListener("models-changed", showServerStatus);
