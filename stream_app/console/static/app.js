// The review page. Every value from events is put in the page with textContent (never innerHTML): merchant
// ids and every other field come from topics that others write to.
"use strict";

const state = { analyst: "", token: "", views: new Map(), controller: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function headers(json) {
  const h = {};
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function status(text) { document.getElementById("status").textContent = text; }

function fmt(x, digits) { return typeof x === "number" ? x.toFixed(digits) : String(x == null ? "" : x); }

function table(head, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))));
}

function render(view) {
  const a = view.alert;
  const card = el("article", { class: "alert " + (a.decision === "decline" ? "decline" : "review"),
                               "data-alert-id": String(a.alert_id) });
  card.append(el("h2", {}, el("span", { class: "badge" }, a.decision),
    el("span", { class: "risk" }, "risk " + fmt(a.risk_score, 3)),
    el("span", { class: "amount" }, fmt(a.amount, 2) + " " + String(a.currency || ""))));
  card.append(el("dl", {},
    el("dt", {}, "transaction"), el("dd", { class: "tx" }, a.tx_id),
    el("dt", {}, "card"), el("dd", { class: "card" }, a.card_id),
    el("dt", {}, "merchant"), el("dd", { class: "merchant" }, a.merchant_id),
    el("dt", {}, "country"), el("dd", {}, a.country),
    el("dt", {}, "event time"), el("dd", {}, a.event_time),
    el("dt", {}, "alerted at"), el("dd", {}, a.alerted_at)));
  const scores = a.scores && typeof a.scores === "object" ? Object.entries(a.scores) : [];
  const versions = a.model_versions && typeof a.model_versions === "object" ? Object.entries(a.model_versions) : [];
  card.append(el("h3", {}, "Scores and model versions"),
    table(["model", "score", "version"], [...new Set([...scores.map((s) => s[0]), ...versions.map((v) => v[0])])]
      .map((m) => [m, fmt((a.scores || {})[m], 3), (a.model_versions || {})[m]])));
  const reasons = Array.isArray(a.reasons) ? a.reasons : [];
  card.append(el("h3", {}, "Reasons"),
    el("ul", { class: "reasons" }, ...reasons.map((r) => el("li", {}, r && r.text != null ? r.text : JSON.stringify(r)))));
  const rules = a.rules && typeof a.rules === "object" ? a.rules : null;
  if (rules) {
    const hits = Array.isArray(rules.hits) ? rules.hits : [];
    card.append(el("h3", {}, "Rules (set " + String(rules.version) + ")"),
      el("p", { class: "rules" }, rules.decided_by ? "decided by rule " + String(rules.decided_by) +
        " (the models said " + String(rules.model_decision) + ")" : "the models' decision stands"),
      hits.length ? table(["rule", "action", "mode", "reason"], hits.map((h) => [h.id, h.action, h.mode, h.reason]))
        : el("p", { class: "claim" }, "no rule matched"));
  }
  card.append(el("h3", {}, "Card's recent transactions"),
    view.recent.length ? table(["time", "merchant", "EUR", "decision", "risk"], view.recent.map((t) =>
      [t.event_time, t.merchant_id, fmt(t.amount_eur, 2), t.decision, fmt(t.risk_score, 3)]))
      : el("p", { class: "claim" }, "none seen by this console"));
  const claim = view.claim;
  const mine = claim && claim.analyst === state.analyst;
  const actions = el("div", { class: "actions" },
    el("span", { class: "claim" + (mine ? " mine" : "") },
       claim ? "claimed by " + claim.analyst + " until " + new Date(claim.expires_ms).toLocaleTimeString() : "unclaimed"));
  const button = (text, cls, enabled, onclick) => {
    const b = el("button", { type: "button", class: cls }, text);
    b.disabled = !enabled;
    b.addEventListener("click", onclick);
    return b;
  };
  const free = !claim || mine;
  actions.append(
    button(mine ? "Renew claim" : "Claim", "claim-button", free && !!state.analyst, () => act(a.alert_id, "claim")),
    button("Release", "release-button", !!mine, () => act(a.alert_id, "release")),
    button("Confirm fraud", "fraud", !!mine, () => act(a.alert_id, "verdict", "fraud")),
    button("Legit", "legit", !!mine, () => act(a.alert_id, "verdict", "legit")),
    el("span", { class: "error" }));
  card.append(actions);
  return card;
}

function redraw(alertId) {
  const queue = document.getElementById("queue");
  const old = [...queue.children].find((n) => n.dataset.alertId === String(alertId));
  const view = state.views.get(alertId);
  if (view && old) old.replaceWith(render(view));
  else if (view) queue.prepend(render(view));
  else if (old) old.remove();
  document.getElementById("empty").hidden = state.views.size > 0;
}

function apply(event) {
  if (event.type === "snapshot") {
    state.views = new Map(event.views.map((v) => [v.alert.alert_id, v]));
    const queue = document.getElementById("queue");
    queue.replaceChildren(...[...state.views.values()].reverse().map(render));
    document.getElementById("empty").hidden = state.views.size > 0;
    return;
  }
  const view = state.views.get(event.alert_id);
  if (event.type === "alert") state.views.set(event.view.alert.alert_id, event.view);
  else if (event.type === "claimed" && view) view.claim = { analyst: event.analyst, expires_ms: event.expires_ms };
  else if (event.type === "released" && view) view.claim = null;
  else if (event.type === "closed") state.views.delete(event.alert_id);
  redraw(event.type === "alert" ? event.view.alert.alert_id : event.alert_id);
}

async function act(alertId, action, verdict) {
  const body = { analyst: state.analyst };
  if (verdict) body.verdict = verdict;
  const response = await fetch("/api/alerts/" + encodeURIComponent(alertId) + "/" + action,
                               { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!response.ok) {
    const detail = await response.json().catch(() => ({ detail: response.statusText }));
    const card = [...document.getElementById("queue").children].find((n) => n.dataset.alertId === String(alertId));
    if (card) card.querySelector(".error").textContent = detail.detail || detail.error;
  }
}

async function listen() {
  if (state.controller) state.controller.abort();
  const controller = state.controller = new AbortController();
  while (!controller.signal.aborted) {
    try {
      const response = await fetch("/api/events", { headers: headers(false), signal: controller.signal });
      if (response.status === 401) { status("token refused: enter the bearer token"); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      status("live as " + state.analyst);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) apply(JSON.parse(data));
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
      status("disconnected, retrying: " + err.message);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const analyst = document.getElementById("analyst");
  const token = document.getElementById("token");
  analyst.value = sessionStorage.getItem("analyst") || "";
  token.value = sessionStorage.getItem("token") || "";
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!analyst.checkValidity()) { status("analyst: 1 to 64 letters, digits or _.:@-"); return; }
    state.analyst = analyst.value;
    state.token = token.value;
    sessionStorage.setItem("analyst", state.analyst);
    sessionStorage.setItem("token", state.token);
    listen();
  });
});
