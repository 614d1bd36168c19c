// GET /v1/models once for the sections that need the served model (its heads) or the versions;
// reloaded after an activation and when the API key changes ("models-changed").

import { events, get } from "./api.js";

let cards = null; // Promise<card[]> of GET /v1/models

export function modelCards() {
  if (cards === null) {
    const loading = get("v1/models").then((body) => body.data);
    // a failed load (e.g. no key yet) is tried again next time
    loading.catch(() => cards === loading && (cards = null));
    cards = loading;
  }
  return cards;
}

export async function servingCard() {
  return (await modelCards()).find((card) => card.serving) ?? null;
}

/** Forget the cached list and tell every section to reload what depends on it. */
export function modelsChanged() {
  cards = null;
  events.dispatchEvent(new Event("models-changed"));
}
