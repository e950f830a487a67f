// NSC Fate local web UI: plain JavaScript on the REST routes /_/api/... and the sign-in routes /_/auth/...
// No build step. Views are <section>s in index.html chosen by the URL hash (#/classify, #/history, ...).
// Untrusted text is only ever set with textContent.
"use strict";

const UPLOAD_CONCURRENCY = 3;
// Files go several to a request, so that the worker gets full batches: one file per request kept its
// batches at 1-2 images and a drop of 512 images went at 28% of the batched speed (docs/PERFORMANCE.md).
const FILES_PER_REQUEST = 16;
const BYTES_PER_REQUEST = 32 * 1024 * 1024;  // well under the server's 128 MB per request
const state = {
  user: null,          // {email, role}
  csrf: null,          // the session's CSRF token, sent with every state-changing request
  models: [],          // model cards from /_/api/models
  historyPage: null,   // the last history page shown
};

// ------------------------------------------------------------------------------------------- helpers

const $ = (id) => document.getElementById(id);

/** Create an element: h("p", {class: "x"}, "text", child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function percent(p, digits = 1) {
  return typeof p === "number" ? (100 * p).toFixed(digits) + "%" : "–";
}

function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().slice(0, 16).replace("T", " ");
}

function announce(text) {
  const el = $("announcer");
  el.textContent = "";
  setTimeout(() => { el.textContent = text; }, 50);
}

function showMessage(el, text, isError = true) {
  el.textContent = text || "";
  el.hidden = !text;
  el.classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Call a JSON route; throws ApiError with the server's message. A 401 sends the user to sign in. */
async function api(method, path, body) {
  const headers = {"X-Requested-With": "fetch", "Accept": "application/json"};
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const options = {method, headers, credentials: "same-origin"};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new ApiError(0, "network", "The NSC Fate server cannot be reached. Is it still running?");
  }
  let data = null;
  if ((response.headers.get("Content-Type") || "").includes("application/json")) data = await response.json();
  if (!response.ok) {
    const err = (data && data.error) || {};
    if (response.status === 401 && !path.startsWith("/_/auth/")) signedOut("Your session has ended; sign in again.");
    throw new ApiError(response.status, err.code || "http_" + response.status,
                       err.message || `The server answered ${response.status} ${response.statusText}`);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

// ----------------------------------------------------------------------------------- routing + views

const VIEWS = ["sign-in", "classify", "history", "detail", "summary", "models", "users", "account"];

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return {view: parts[0] || "classify", arg: parts[1] || null, params: new URLSearchParams(search || "")};
}

function showView(name) {
  for (const v of VIEWS) $("view-" + v).hidden = v !== name;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === name || (name === "detail" && a.dataset.view === "history")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const title = $("view-" + name).querySelector("h1");
  document.title = (title ? title.textContent + " – " : "") + "NSC Fate";
}

async function route() {
  if (!state.user) {
    showView("sign-in");
    return;
  }
  if (state.user.password_is_temporary) {  // the host made this password up: the person chooses one first
    if (parseHash().view !== "account") history.replaceState(null, "", "#/account");  // so a nav link works after
    showAccount();
    $("main").focus({preventScroll: true});
    return;
  }
  const {view, arg, params} = parseHash();
  const handlers = {classify: showClassify, history: () => showHistory(params), prediction: () => showDetail(arg),
                    summary: () => showSummary(params), models: showModels, users: showUsers, account: showAccount};
  const handler = handlers[view] || showClassify;
  await handler();
  $("main").focus({preventScroll: true});
}

// --------------------------------------------------------------------------------------------- auth

async function loadSession() {
  try {
    const me = await api("GET", "/_/auth/me");
    state.user = me.user;
    state.csrf = me.csrf_token;
  } catch (e) {
    state.user = null;
  }
  await afterSessionChange();
}

async function afterSessionChange() {
  const signedIn = !!state.user;
  $("nav").hidden = !signedIn;
  $("account").hidden = !signedIn;
  $("who").textContent = signedIn ? state.user.email : "";
  $("nav-users").hidden = !(signedIn && state.user.role === "lab_admin");
  if (signedIn) {
    await loadModels();
    loadRecentExperiments();
  } else {
    $("model-banner").hidden = true;
  }
  await route();
}

function signedOut(message) {
  if (!state.user) return;
  state.user = null;
  state.csrf = null;
  afterSessionChange();
  showMessage($("sign-in-error"), message);
}

async function signIn(event) {
  event.preventDefault();
  const error = $("sign-in-error");
  showMessage(error, "");
  const email = $("sign-in-email").value.trim();
  const password = $("sign-in-password").value;
  if (!email || !password) {
    showMessage(error, "Enter your email address and password.");
    return;
  }
  try {
    const data = await api("POST", "/_/auth/login", {email, password});
    state.user = data.user;
    state.csrf = data.csrf_token;
    $("sign-in-password").value = "";
    if (parseHash().view === "sign-in") location.hash = "#/classify";
    announce("Signed in as " + state.user.email);
    await afterSessionChange();
  } catch (e) {
    showMessage(error, e.message);
  }
}

async function signOut() {
  try {
    await api("POST", "/_/auth/logout");
  } catch (e) { /* signed out on the server already */ }
  state.user = null;
  state.csrf = null;
  $("results").replaceChildren();
  history.replaceState(null, "", location.pathname);  // the next person starts on Classify, not on this page
  await afterSessionChange();
  showMessage($("sign-in-error"), "You are signed out.", false);
  announce("Signed out");
}

async function signUp(event) {
  event.preventDefault();
  const message = $("sign-up-message");
  try {
    const data = await api("POST", "/_/auth/signup",
                           {email: $("sign-up-email").value.trim(), password: $("sign-up-password").value});
    showMessage(message, data.message, false);
  } catch (e) {
    showMessage(message, e.message);
  }
}

function showAccount() {
  showView("account");
  $("account-info").textContent = `Signed in as ${state.user.email} (${state.user.role === "lab_admin" ? "lab admin" : "researcher"}).`;
  $("password-temporary").hidden = !state.user.password_is_temporary;
}

async function changePassword(event) {
  event.preventDefault();
  const message = $("password-message");
  try {
    const data = await api("POST", "/_/auth/password",
                           {old_password: $("old-password").value, new_password: $("new-password").value});
    state.user = data.user;
    state.csrf = data.csrf_token;
    $("old-password").value = "";
    $("new-password").value = "";
    showAccount();
    showMessage(message, "Password changed. Other sessions of this account were signed out.", false);
  } catch (e) {
    showMessage(message, e.message);
  }
}

// ------------------------------------------------------------------------------------ models + health

async function loadModels() {
  try {
    const data = await api("GET", "/_/api/models");
    state.models = data.models || [];
  } catch (e) {
    state.models = [];
  }
  const select = $("model-select");
  select.replaceChildren(...state.models.map((m) =>
    h("option", {value: m.name}, `${m.name} ${m.version}${m.default ? " (default)" : ""}`)));
  if (!state.models.length) select.append(h("option", {value: ""}, "default model"));
  select.onchange = renderModelBanner;
  const filterModel = $("f-model");
  filterModel.replaceChildren(h("option", {value: ""}, "any"),
                              ...state.models.map((m) => h("option", {value: m.name}, m.name)));
  const classes = new Map();
  for (const m of state.models) for (const c of m.classes || []) classes.set(c.key, c.display_name);
  $("f-condition").replaceChildren(h("option", {value: ""}, "any"),
                                   ...[...classes].map(([k, name]) => h("option", {value: k}, name)));
  renderModelBanner();
}

function cardOf(name) {
  return state.models.find((m) => m.name === name) || null;
}

function trainedOnLine(name) {
  const t = trainedOn(name);
  return t ? h("p", {class: "model-line"}, t) : null;
}

/** "Trained on ..." for a model name; synthetic-data models say so in capitals. */
function trainedOn(name) {
  const card = cardOf(name);
  if (!card) return null;
  const what = card.synthetic_training_data
    ? (card.trained_on || "").replace(/^SYNTHETIC /, "")  // older cards repeat what the label says
    : card.trained_on;
  return h("span", {class: card.synthetic_training_data ? "synthetic" : ""},
           card.synthetic_training_data ? "Trained on SYNTHETIC data: " : "Trained on: ",
           (what || "not stated").replace(/[.\s]+$/, ""));  // callers end the sentence
}

function renderModelBanner() {
  const banner = $("model-banner");
  // the model the next upload goes to: the one picked on Classify, else the default
  const card = cardOf($("model-select").value) || state.models.find((m) => m.default) || state.models[0];
  if (!card) {
    banner.replaceChildren(h("strong", {}, "No prediction worker is connected: "),
                           "images cannot be classified until one is running.");
    banner.className = "banner warning";
    banner.hidden = false;
    return;
  }
  const parts = [h("span", {}, "Predictions by ", h("strong", {}, `${card.name} ${card.version}`),
                   ` (${card.arch || "model"}, ${(card.classes || []).length} classes). `)];
  parts.push(trainedOn(card.name), ".");
  if (card.synthetic_training_data) {
    parts.push(h("span", {}, " It has never seen real cells: its predictions are for trying the tool only."));
  }
  banner.replaceChildren(...parts);
  banner.className = "banner" + (card.synthetic_training_data ? " warning" : "");
  banner.hidden = false;
}

async function refreshHealth() {
  const el = $("health");
  try {
    const response = await fetch("/_/api/health", {headers: {"X-Requested-With": "fetch"}});
    const data = await response.json();
    el.textContent = data.workers
      ? `Prediction service: ${data.workers} worker${data.workers === 1 ? "" : "s"} connected (${(data.models || []).join(", ")})`
      : "Prediction service: no worker connected";
    el.classList.toggle("error", !data.workers);
  } catch (e) {
    el.textContent = "The NSC Fate server cannot be reached.";
    el.classList.add("error");
  }
}

// ------------------------------------------------------------------------------------------ classify

function showClassify() {
  showView("classify");
}

function probabilityBars(result) {
  const list = h("div", {class: "bars", role: "list", "aria-label": "Probability of each condition"});
  for (const c of result.classes || []) {
    const p = (result.probabilities || {})[c.key] || 0;
    const fill = h("span", {class: "fill" + (c.key === result.predicted_class ? " top" : "")});
    fill.style.width = (100 * p).toFixed(1) + "%";
    list.append(h("div", {class: "bar-row", role: "listitem"},
                  h("span", {class: "bar-label"}, c.display_name || c.key),
                  h("span", {class: "bar", "aria-hidden": "true"}, fill),
                  h("span", {class: "bar-value"}, percent(p))));
  }
  return list;
}

function warningsList(warnings) {
  if (!warnings || !warnings.length) return null;
  return h("ul", {class: "warnings", "aria-label": "Warnings"}, warnings.map((w) => h("li", {}, w)));
}

function modelLine(model) {
  const card = cardOf(model.name);
  return h("p", {class: "model-line"}, `Model ${model.name} ${model.version}`,
           card && card.synthetic_training_data
             ? h("span", {class: "synthetic"}, " (trained on synthetic data: not for real cells)") : null);
}

/** A "Show Grad-CAM" button that fetches the overlay and shows it in place. */
function gradcamControl(result) {
  const box = h("div", {class: "gradcam"});
  const button = h("button", {type: "button", class: "secondary"}, "Show Grad-CAM");
  const status = h("p", {class: "muted", role: "status"});
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = "Computing the Grad-CAM overlay…";
    try {
      const response = await fetch(result.gradcam_url, {headers: {"X-Requested-With": "fetch"}, credentials: "same-origin"});
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        throw new Error((data.error && data.error.message) || `The server answered ${response.status}`);
      }
      const url = URL.createObjectURL(await response.blob());
      const note = response.headers.get("X-Explanation-Note");
      button.remove();
      status.textContent = note || "Red regions raised the predicted condition's score the most.";
      box.prepend(h("img", {src: url, class: "gradcam-image",
                            alt: `Grad-CAM overlay of ${result.filename} for ${result.predicted_display_name}`}));
    } catch (e) {
      status.textContent = "Grad-CAM is not available: " + e.message;
      status.classList.add("error");
      button.disabled = false;
    }
  });
  box.append(button, status);
  return box;
}

function resultCard(file, retry) {
  const progress = h("progress", {max: "100", value: "0", "aria-label": `Upload of ${file.name}`});
  const stage = h("p", {class: "stage muted"}, "Waiting to upload…");
  const thumb = h("div", {class: "thumb-box"});
  const head = h("div", {class: "result-head"}, h("h2", {class: "card-title"}, file.name), progress, stage);
  const body = h("div", {class: "result-body"});
  const card = h("article", {class: "card result pending"}, thumb, head, body);
  return {
    card,
    progress(fraction) {
      progress.value = Math.round(100 * fraction);
      stage.textContent = fraction < 1 ? `Uploading… ${Math.round(100 * fraction)}%` : "Classifying…";
    },
    done(result) {
      progress.remove();
      stage.remove();
      card.classList.remove("pending");
      if (!result.ok) {
        card.classList.add("rejected");
        if (result.error.retry_later) {  // not the file's fault: the server could not classify it just then
          card.dataset.outcome = "not-classified";
          const again = h("button", {type: "button", class: "secondary"}, "Try again");
          again.addEventListener("click", () => { card.remove(); retry(file); });
          head.append(h("p", {class: "rejection", role: "alert"}, h("strong", {}, "Not classified: "), result.error.message),
                      h("p", {}, again));
        } else {
          card.dataset.outcome = "rejected";
          head.append(h("p", {class: "rejection", role: "alert"}, h("strong", {}, "Rejected: "), result.error.message),
                      h("p", {class: "muted"}, `Reason code: ${result.error.code}`));
        }
        return;
      }
      card.dataset.outcome = "ok";
      card.dataset.predictionId = result.id;
      thumb.append(h("img", {src: result.preview_url, class: "thumb", alt: `Cell image ${result.filename}`, loading: "lazy"}));
      // With no cell in the image the class probabilities describe nothing: say so first.
      const verdict = result.no_cell
        ? h("p", {class: "verdict doubtful"}, h("strong", {}, "No cell found"),
            ` - not a meaningful prediction (the model said ${result.predicted_display_name}, ${percent(result.confidence)})`)
        : h("p", {class: "verdict"}, "Predicted condition: ", h("strong", {}, result.predicted_display_name),
            h("span", {class: "confidence"}, ` ${percent(result.confidence)}`));
      head.append(verdict, modelLine(result.model));
      body.append(...[probabilityBars(result), warningsList(result.warnings),
                      h("p", {class: "links"}, h("a", {href: "#/prediction/" + encodeURIComponent(result.id)}, "Details")),
                      gradcamControl(result)].filter(Boolean));
    },
  };
}

/** Send ``files`` in one request; resolves to one result per file, in order (the server answers so).
 * ``onProgress(i, fraction)``: how much of file i is sent (the form sends the files one after another). */
function uploadFiles(files, fields, onProgress) {
  return new Promise((resolve) => {
    const form = new FormData();
    for (const file of files) form.append("file", file, file.name);
    for (const [k, v] of Object.entries(fields)) if (v) form.append(k, v);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/_/api/predictions");
    xhr.setRequestHeader("X-Requested-With", "fetch");
    if (state.csrf) xhr.setRequestHeader("X-CSRF-Token", state.csrf);
    const total = files.reduce((n, f) => n + f.size, 0);
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      const sent = total * e.loaded / e.total;  // the form's own bytes spread over the files
      let start = 0;
      files.forEach((f, i) => {
        onProgress(i, f.size ? Math.min(1, Math.max(0, (sent - start) / f.size)) : Number(sent >= start));
        start += f.size;
      });
    });
    xhr.upload.addEventListener("load", () => files.forEach((f, i) => onProgress(i, 1)));
    const failAll = (code, message) => resolve(files.map((file) => ({ok: false, filename: file.name, error: {code, message}})));
    xhr.addEventListener("error", () => failAll("network", "The upload failed: the server cannot be reached"));
    xhr.addEventListener("load", () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (data && Array.isArray(data.results) && data.results.length === files.length) {
        resolve(data.results.map((r, i) => ({...r, filename: r.filename || files[i].name})));
      } else if (xhr.status === 401) {
        signedOut("Your session has ended; sign in again.");
        failAll("not_signed_in", "Sign in again to classify images");
      } else {
        const err = (data && data.error) || {};
        failAll(err.code || "http_" + xhr.status, err.message || `The server answered ${xhr.status}`);
      }
    });
    xhr.send(form);
  });
}

/** Split ``jobs`` into requests: as many as run at once when there are few files (each answer comes as
 * soon as it can), up to FILES_PER_REQUEST files and BYTES_PER_REQUEST each when there are many. */
function uploadGroups(jobs) {
  const size = Math.min(FILES_PER_REQUEST, Math.ceil(jobs.length / UPLOAD_CONCURRENCY));
  const groups = [];
  let group = [], bytes = 0;
  for (const job of jobs) {
    if (group.length && (group.length >= size || bytes + job.file.size > BYTES_PER_REQUEST)) {
      groups.push(group);
      group = [];
      bytes = 0;
    }
    group.push(job);
    bytes += job.file.size;
  }
  if (group.length) groups.push(group);
  return groups;
}

async function classifyFiles(files, fields = null) {
  if (!files.length) return;
  fields = fields || {experiment: $("experiment").value.trim(), notes: $("notes").value.trim(),
                      model: $("model-select").value};
  const results = $("results");
  // "Try again" sends a file with the experiment, notes and model it was first sent with
  const jobs = files.map((file) => ({file, view: resultCard(file, (f) => classifyFiles([f], fields))}));
  results.prepend(...jobs.map((j) => j.view.card));
  const status = $("batch-status");
  status.hidden = false;
  // The status counts every card shown, so that a file sent again (or a second drop) adds to the
  // totals rather than replacing them with its own "1 of 1".
  const update = () => {
    const count = (outcome) => results.querySelectorAll(`.result[data-outcome="${outcome}"]`).length;
    const all = results.querySelectorAll(".result").length, pending = results.querySelectorAll(".result.pending").length;
    const ok = count("ok"), rejected = count("rejected"), later = count("not-classified");
    const n = `${all} image${all === 1 ? "" : "s"}`;
    $("batch-text").textContent = pending
      ? `Classifying ${n}: ${all - pending} done`
      : `${ok} of ${n} classified` + (rejected ? `, ${rejected} rejected` : "") +
        (later ? `, ${later} not classified (try again)` : "");
  };
  update();
  const queue = uploadGroups(jobs);
  const runNext = async () => {
    while (queue.length) {
      const group = queue.shift();
      const answers = await uploadFiles(group.map((j) => j.file), fields, (i, f) => group[i].view.progress(f));
      group.forEach((job, i) => job.view.done(answers[i]));
      update();
    }
  };
  await Promise.all(Array.from({length: Math.min(UPLOAD_CONCURRENCY, queue.length)}, runNext));
  announce($("batch-text").textContent);
  if (fields.experiment) addExperiments([fields.experiment]);
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("files");
  input.addEventListener("change", () => {
    classifyFiles([...input.files]);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    classifyFiles([...e.dataTransfer.files]);
  });
  // A file dropped next to the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("clear-results").addEventListener("click", () => {
    $("results").replaceChildren();
    $("batch-status").hidden = true;
  });
}

/** Offer the experiments of the latest predictions as suggestions in experiment fields. */
async function loadRecentExperiments() {
  try {
    const page = await api("GET", "/_/api/predictions?page_size=200");
    addExperiments(page.rows.map((r) => r.experiment));
  } catch (e) { /* suggestions only */ }
}

function addExperiments(names) {
  const list = $("experiment-list");
  const known = new Set([...list.options].map((o) => o.value));
  for (const name of names) if (name && !known.has(name)) { list.append(h("option", {value: name})); known.add(name); }
}

// ------------------------------------------------------------------------------------------- history

const FILTERS = ["condition", "experiment", "user", "date_from", "date_to", "model"];

function historyParams(params) {
  const out = {};
  for (const k of FILTERS) out[k] = params.get(k) || "";
  out.page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  out.page_size = parseInt(params.get("page_size") || $("page-size").value, 10) || 25;
  return out;
}

/** The history filters as the form shows them now. */
function formFilters(form) {
  const filters = {};
  for (const k of FILTERS) filters[k] = form.elements[k].value.trim();
  return filters;
}

function setExportLink(filters) {
  $("export-csv").href = "/_/api/predictions.csv" + query(filters);
}

function goHistory(p) {
  const hash = "#/history" + query(p);
  if (location.hash === hash) route();  // the same filters again: reload (no hashchange event)
  else location.hash = hash;
}

async function showHistory(params) {
  showView("history");
  const p = historyParams(params);
  const form = $("history-filters");
  for (const k of FILTERS) form.elements[k].value = p[k];
  const size = $("page-size");
  if (![...size.options].some((o) => o.value === String(p.page_size))) {  // a size typed into the URL: shown too
    size.append(h("option", {}, String(p.page_size)));
  }
  size.value = String(p.page_size);
  // The filters as asked for (not as the form reads them back: a date input shows "" for a bad date).
  const filters = {};
  for (const k of FILTERS) filters[k] = p[k];
  setExportLink(filters);
  const error = $("history-error");
  showMessage(error, "");
  let page;
  try {
    page = await api("GET", "/_/api/predictions" + query({...filters, page: p.page, page_size: p.page_size}));
  } catch (e) {
    showMessage(error, e.message);
    $("history-table").tBodies[0].replaceChildren();
    $("history-caption").textContent = "No predictions shown: fix the filters above";
    return;
  }
  state.historyPage = p;
  if (!page.rows.length && page.total && p.page > 0) {  // e.g. the last row of the last page was deleted
    goHistory({...p, page: page.pages - 1});
    return;
  }
  addExperiments(page.rows.map((r) => r.experiment));
  const body = $("history-table").tBodies[0];
  body.replaceChildren(...page.rows.map(historyRow));
  const shownFrom = page.total ? page.page * page.page_size + 1 : 0;
  $("history-caption").textContent = page.total
    ? `Predictions ${shownFrom}–${shownFrom + page.rows.length - 1} of ${page.total}, newest first`
    : "No predictions match these filters.";
  $("page-info").textContent = `Page ${page.total ? page.page + 1 : 0} of ${page.pages}`;
  $("page-prev").disabled = page.page <= 0;
  $("page-next").disabled = page.page + 1 >= page.pages;
}

function historyRow(r) {
  const actions = h("td", {class: "actions"},
                    h("a", {href: "#/prediction/" + encodeURIComponent(r.id)}, "View"));
  if (r.can_delete) actions.append(" ", deleteControl(r, () => showHistory(new URLSearchParams(query(state.historyPage)))));
  return h("tr", {"data-id": r.id},
           h("td", {}, h("img", {src: r.preview_url, class: "mini", alt: "", loading: "lazy"})),
           h("td", {class: "filename"}, r.filename),
           h("td", {}, r.predicted_display_name, flagMark(r.flags)),
           h("td", {class: "num"}, percent(r.confidence)),
           h("td", {}, r.experiment || ""),
           h("td", {class: "user"}, emailWithBreak(r.user || "")),
           h("td", {}, formatDate(r.created)),
           h("td", {class: "model"}, `${r.model.name} ${r.model.version}`),
           actions);
}

/** A mark after a flagged prediction's condition (``flags``: the server's pick of its warnings - no cell
 * found, several objects, low confidence...); they are in its text for screen readers and its tooltip. */
function flagMark(flags) {
  if (!flags || !flags.length) return null;
  const text = flags.join("; ");
  return h("span", {class: "flag", title: text}, " ⚠", h("span", {class: "visually-hidden"}, ` Flagged: ${text}`));
}

/** An email that may wrap before its "@" (and only there, unless a part is longer than the column). */
function emailWithBreak(email) {
  const at = email.indexOf("@");
  return at > 0 ? [email.slice(0, at), h("wbr"), email.slice(at)] : email;
}

/** Change a stored prediction's experiment and notes (a batch classified before its experiment was
 *  typed, a typo): a button that opens a small form in place. */
function editControl(r, afterSave) {
  const box = h("span", {class: "edit-control"});
  const open = h("button", {type: "button", class: "secondary"}, "Edit experiment and notes");
  open.addEventListener("click", () => {
    const experiment = h("input", {id: "edit-experiment", name: "experiment", maxlength: "200", list: "experiment-list",
                                   value: r.experiment || ""});
    const notes = h("input", {id: "edit-notes", name: "notes", maxlength: "2000", value: r.notes || ""});
    const message = h("p", {class: "error", role: "alert", hidden: true});
    const cancel = h("button", {type: "button", class: "secondary"}, "Cancel");
    const form = h("form", {class: "panel edit-form", "aria-label": `Experiment and notes of ${r.filename}`},
      h("label", {for: "edit-experiment"}, "Experiment"), experiment,
      h("label", {for: "edit-notes"}, "Notes"), notes, message,
      h("p", {}, h("button", {type: "submit"}, "Save"), " ", cancel));
    cancel.addEventListener("click", () => { box.replaceChildren(open); open.focus(); });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await api("PATCH", "/_/api/predictions/" + encodeURIComponent(r.id),
                  {experiment: experiment.value.trim() || null, notes: notes.value.trim() || null});
      } catch (err) {
        showMessage(message, err.message);
        return;
      }
      announce(`Saved the experiment and notes of ${r.filename}`);
      if (experiment.value.trim()) addExperiments([experiment.value.trim()]);
      await afterSave();
    });
    box.replaceChildren(form);
    experiment.focus();
  });
  box.append(open);
  return box;
}

/** Delete in two steps (no browser dialog): "Delete" then "Confirm delete". */
function deleteControl(r, afterDelete) {
  const box = h("span", {class: "delete-control"});
  const ask = h("button", {type: "button", class: "danger small", "aria-label": `Delete ${r.filename}`}, "Delete");
  ask.addEventListener("click", () => {
    const confirmButton = h("button", {type: "button", class: "danger small"}, "Confirm delete");
    const cancel = h("button", {type: "button", class: "secondary small"}, "Cancel");
    cancel.addEventListener("click", () => { box.replaceChildren(ask); ask.focus(); });  // focus stays in place
    confirmButton.addEventListener("click", async () => {
      confirmButton.disabled = true;
      try {
        await api("DELETE", "/_/api/predictions/" + encodeURIComponent(r.id));
        announce(`Deleted the prediction for ${r.filename}`);
        await afterDelete();
      } catch (e) {
        box.replaceChildren(h("span", {class: "error", role: "alert"}, e.message));
      }
    });
    box.replaceChildren(confirmButton, " ", cancel);
    confirmButton.focus();
  });
  box.append(ask);
  return box;
}

function setUpHistory() {
  const form = $("history-filters");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    goHistory({...formFilters(form), page: 0, page_size: $("page-size").value});
  });
  form.addEventListener("reset", () => setTimeout(() => goHistory({page_size: $("page-size").value}), 0));
  // Export what the filters say now, also before they are applied to the table.
  form.addEventListener("input", () => setExportLink(formFilters(form)));
  // A refused export (filters that cannot be read, a session that ended) would only show as a failed
  // download: one row is asked for first, and the reason shown here. The CSV itself still streams
  // as a download rather than through a script (a whole history can be hundreds of MB).
  const exportLink = $("export-csv");
  exportLink.addEventListener("click", async (e) => {
    if (exportLink.dataset.checked === exportLink.href) return;  // checked just now: let it download
    e.preventDefault();
    const error = $("history-error");
    showMessage(error, "");
    try {
      const filters = Object.fromEntries(new URL(exportLink.href).searchParams);  // exactly what it exports
      await api("GET", "/_/api/predictions" + query({...filters, page: 0, page_size: 1}));
    } catch (err) {
      showMessage(error, "Not exported: " + err.message);
      return;
    }
    exportLink.dataset.checked = exportLink.href;
    exportLink.click();
    delete exportLink.dataset.checked;
  });
  const move = (delta) => {
    const p = {...state.historyPage};
    p.page = Math.max(0, p.page + delta);
    goHistory(p);
  };
  $("page-prev").addEventListener("click", () => move(-1));
  $("page-next").addEventListener("click", () => move(1));
  $("page-size").addEventListener("change", () => goHistory({...state.historyPage, page: 0, page_size: $("page-size").value}));
}

// -------------------------------------------------------------------------------------------- detail

/** The history page last shown, with its filters and page: where a detail goes back to. */
function historyHash() {
  return "#/history" + (state.historyPage ? query(state.historyPage) : "");
}

async function showDetail(id) {
  showView("detail");
  $("detail-back").href = historyHash();
  $("detail-title").textContent = "Prediction";  // not the previous one's file name while loading or on error
  const body = $("detail-body");
  body.replaceChildren(h("p", {class: "muted"}, "Loading…"));
  let r;
  try {
    r = await api("GET", "/_/api/predictions/" + encodeURIComponent(id));
  } catch (e) {
    body.replaceChildren(h("p", {class: "error", role: "alert"}, e.message));
    return;
  }
  $("detail-title").textContent = r.filename;
  const facts = h("dl", {class: "facts"});
  const fact = (k, v) => { if (v) facts.append(h("dt", {}, k), h("dd", {}, v)); };
  fact("Predicted condition", `${r.predicted_display_name} (${percent(r.confidence)})`);
  fact("Experiment", r.experiment);
  fact("Notes", r.notes);
  fact("By", r.user);
  fact("Date (UTC)", formatDate(r.created));
  fact("Model", `${r.model.name} ${r.model.version}`);
  fact("Image SHA-256", r.image_sha256);
  const actions = h("p", {class: "actions"},
                    h("a", {href: r.image_url, class: "button secondary", download: r.filename}, "Download the image"));
  if (r.can_edit) actions.append(" ", editControl(r, () => showDetail(r.id)));
  if (r.can_delete) actions.append(" ", deleteControl(r, () => { location.hash = historyHash(); }));
  body.replaceChildren(h("div", {class: "detail"},
    h("div", {class: "detail-image"},
      h("img", {src: r.preview_url, class: "large", alt: `Cell image ${r.filename}`})),
    h("div", {}, facts, probabilityBars(r), warningsList(r.warnings), modelLine(r.model),
      trainedOnLine(r.model.name), gradcamControl(r), actions)));
}

// ------------------------------------------------------------------------------------------- summary

async function showSummary(params) {
  showView("summary");
  const experiment = params.get("experiment") || "";
  $("summary-experiment").value = experiment;
  const out = $("summary-body");
  showMessage($("summary-error"), "");
  out.replaceChildren();
  if (!experiment) return;
  let s;
  try {
    s = await api("GET", "/_/api/summary" + query({experiment}));
  } catch (e) {
    showMessage($("summary-error"), e.message);
    return;
  }
  const cells = (n) => `${n} cell${n === 1 ? "" : "s"}`;
  const images = (n) => `${n} image${n === 1 ? "" : "s"}`;
  if (!s.n_cells && !s.n_left_out) {
    out.append(h("p", {}, `No predictions are recorded for experiment “${s.experiment}”.`));
    return;
  }
  out.append(h("p", {}, `${cells(s.n_cells)} in experiment “${s.experiment}”. ${s.interval}.` +
                        (s.n_left_out ? ` ${images(s.n_left_out)} flagged as no cell or not a single cell ${s.n_left_out === 1 ? "is" : "are"} left out.` : "") +
                        (s.n_repeats ? ` Uploads of an image already counted (the same file again): ${s.n_repeats}, counted once.` : "")));
  for (const m of s.models) {
    const leftOut = Object.entries(m.left_out || {}).map(([why, n]) => `${images(n)}: ${why}`).join("; ");
    const rows = m.conditions.map((c) => h("tr", {},
      h("th", {scope: "row"}, c.display_name || c.key),
      h("td", {class: "num"}, String(c.count)),
      h("td", {class: "num"}, percent(c.share)),
      h("td", {class: "num"}, `${percent(c.low)} – ${percent(c.high)}`),
      h("td", {class: "num"}, percent(c.mean_probability)),
      h("td", {class: "interval-cell"}, intervalBar(c))));
    out.append(h("section", {class: "panel summary-model"},
      h("h2", {}, `Model ${m.model.name} ${m.model.version}: ${cells(m.n_cells)}`),
      h("p", {class: "muted"}, trainedOn(m.model.name)),
      leftOut ? h("p", {class: "muted left-out"}, `Left out of the shares: ${leftOut}.`) : null,
      m.repeats ? h("p", {class: "muted repeats"}, `Uploads of an image already counted: ${m.repeats}, counted once.`) : null,
      !m.n_cells ? h("p", {}, "No cells to share out: every image of this model was left out.") :
      h("div", {class: "table-wrap"}, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Condition"), h("th", {scope: "col"}, "Cells"),
          h("th", {scope: "col"}, "Share"), h("th", {scope: "col"}, "95% interval"),
          h("th", {scope: "col"}, "Mean probability"), h("th", {scope: "col"}, "Share with interval"))),
        h("tbody", {}, rows)))));
  }
}

function intervalBar(c) {
  const share = h("span", {class: "fill"});
  share.style.width = (100 * c.share).toFixed(1) + "%";
  const whisker = h("span", {class: "whisker"});
  whisker.style.left = (100 * c.low).toFixed(1) + "%";
  whisker.style.width = (100 * (c.high - c.low)).toFixed(1) + "%";
  return h("span", {class: "bar interval", "aria-hidden": "true"}, share, whisker);
}

// -------------------------------------------------------------------------------------------- models

async function showModels() {
  showView("models");
  showMessage($("models-error"), "");
  await loadModels();
  const out = $("models-body");
  if (!state.models.length) {
    showMessage($("models-error"), "No prediction worker is connected right now, so no model can be described.");
    out.replaceChildren();
    return;
  }
  out.replaceChildren(...state.models.map((m) => {
    const facts = h("dl", {class: "facts"});
    const fact = (k, v) => { if (v !== null && v !== undefined && v !== "") facts.append(h("dt", {}, k), h("dd", {}, v)); };
    fact("Task", m.task);
    fact("Architecture", m.arch);
    fact("Classes", (m.classes || []).map((c) => c.display_name || c.key).join(", "));
    fact("Input", (m.input_size || []).join(" × ") + " px, one grey channel");
    fact("Trained on", m.trained_on);
    fact("Held-out test accuracy", typeof m.test_accuracy === "number" ? percent(m.test_accuracy) : "not reported");
    fact("Accuracy on unseen acquisition batches",
         typeof m.grouped_test_accuracy === "number" ? percent(m.grouped_test_accuracy) : "not reported");
    fact("Low-confidence warning below", typeof m.low_confidence_threshold === "number" ? percent(m.low_confidence_threshold, 0) : null);
    fact("Created", formatDate(m.created));
    // small in the card; the link opens the full-size plot (the labels of a confusion matrix need it)
    const plots = (m.plots || []).map((p) => h("figure", {},
      h("a", {href: p.url, target: "_blank", rel: "noopener", title: "Open the full-size plot"},
        h("img", {src: p.url, alt: p.title, loading: "lazy"})),
      h("figcaption", {}, p.title)));
    const accuracy = accuracyChart(m);
    if (accuracy) plots.unshift(accuracy);
    return h("article", {class: "card model-card"},
      h("h2", {}, `${m.name} ${m.version}`, m.default ? h("span", {class: "badge"}, "default") : null),
      m.synthetic_training_data
        ? h("p", {class: "synthetic-note"}, "Trained on synthetic data: it has never seen real cells, so its "
            + "predictions and metrics say nothing about real experiments.") : null,
      facts,
      plots.length ? h("div", {class: "plots"}, plots) : h("p", {class: "muted"}, "No plots came with this model card."));
  }));
}

/** Held-out accuracies next to chance (1 / number of classes), as bars. */
function accuracyChart(m) {
  const n = (m.classes || []).length;
  const rows = [["Held-out test images", m.test_accuracy], ["Unseen acquisition batches", m.grouped_test_accuracy],
                ["Chance", n ? 1 / n : null]].filter(([, v]) => typeof v === "number");
  if (rows.length < 2) return null;
  return h("figure", {class: "accuracy-chart"},
    h("div", {class: "bars", role: "list", "aria-label": "Accuracy"}, rows.map(([label, v]) => {
      const fill = h("span", {class: "fill" + (label === "Chance" ? " chance" : " top")});
      fill.style.width = (100 * v).toFixed(1) + "%";
      return h("div", {class: "bar-row", role: "listitem"}, h("span", {class: "bar-label"}, label),
               h("span", {class: "bar", "aria-hidden": "true"}, fill), h("span", {class: "bar-value"}, percent(v)));
    })),
    h("figcaption", {}, "Accuracy, from the model's own held-out evaluation"));
}

// --------------------------------------------------------------------------------------------- users

async function showUsers() {
  showView("users");
  const error = $("users-error");
  showMessage(error, "");
  let users;
  try {
    users = (await api("GET", "/_/api/users")).users;
  } catch (e) {
    showMessage(error, e.message);
    return;
  }
  const change = async (u, changes) => {
    try {
      await api("PATCH", "/_/api/users/" + encodeURIComponent(u.id), changes);
    } catch (e) {
      await showUsers();  // the table shows what is stored, not what was tried
      showMessage(error, e.message);
      return;
    }
    announce(`Updated ${u.email}`);
    if (u.email === state.user.email && changes.role && changes.role !== "lab_admin") {
      await loadSession();  // no longer a lab admin: this page and its tab go
      location.hash = "#/classify";
      return;
    }
    await showUsers();
  };
  $("users-table").tBodies[0].replaceChildren(...users.map((u) => {
    const role = h("select", {"aria-label": `Role of ${u.email}`},
                   h("option", {value: "researcher", selected: u.role !== "lab_admin"}, "researcher"),
                   h("option", {value: "lab_admin", selected: u.role === "lab_admin"}, "lab admin"));
    role.addEventListener("change", () => {
      // A role decides who may manage accounts and delete anyone's predictions: confirmed, as a
      // disable is (an arrow key on the select must not change it alone).
      const wanted = role.value;
      role.disabled = true;
      const makes = wanted === "lab_admin" ? `Make ${u.email} a lab admin` : `Make ${u.email} a researcher`;
      const confirmButton = h("button", {type: "button", class: "small", "aria-label": `Confirm: ${makes}`},
                              u.email === state.user.email && wanted !== "lab_admin" ? "Confirm (your own role)" : "Confirm");
      const cancel = h("button", {type: "button", class: "secondary small"}, "Cancel");
      const done = () => { confirmButton.remove(); cancel.remove(); role.disabled = false; };
      confirmButton.addEventListener("click", () => { done(); change(u, {role: wanted}); });
      cancel.addEventListener("click", () => { done(); role.value = u.role === "lab_admin" ? "lab_admin" : "researcher"; role.focus(); });
      role.after(" ", confirmButton, " ", cancel);
      confirmButton.focus();
    });
    const toggle = h("button", {type: "button", class: (u.enabled ? "secondary" : "") + " small"},
                     u.enabled ? "Disable" : "Enable");
    toggle.setAttribute("aria-label", `${u.enabled ? "Disable" : "Enable"} ${u.email}`);
    toggle.addEventListener("click", () => {
      if (!u.enabled) return change(u, {enabled: true});
      // Disabling signs the person out everywhere: a second, explicit click (no browser dialog).
      const confirmButton = h("button", {type: "button", class: "danger small", "aria-label": `Confirm disabling ${u.email}`},
                              "Confirm disable");
      const cancel = h("button", {type: "button", class: "secondary small"}, "Cancel");
      confirmButton.addEventListener("click", () => change(u, {enabled: false}));
      cancel.addEventListener("click", () => { confirmButton.remove(); cancel.remove(); toggle.hidden = false; toggle.focus(); });
      toggle.hidden = true;
      toggle.after(confirmButton, " ", cancel);
      confirmButton.focus();
    });
    return h("tr", {"data-email": u.email},
             h("td", {}, u.email),
             h("td", {}, u.enabled ? "enabled " : h("strong", {}, u.last_login ? "disabled " : "awaiting approval "), toggle),
             h("td", {}, role),
             h("td", {}, formatDate(u.signed_up)),
             h("td", {}, formatDate(u.last_login)));
  }));
}

// ---------------------------------------------------------------------------------------------- start

function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-up-form").addEventListener("submit", signUp);
  $("sign-out").addEventListener("click", signOut);
  $("password-form").addEventListener("submit", changePassword);
  $("summary-form").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = "#/summary" + query({experiment: $("summary-experiment").value.trim()});
  });
  setUpDropZone();
  setUpHistory();
  window.addEventListener("hashchange", route);
  refreshHealth();
  setInterval(refreshHealth, 15000);
  loadSession();
}

document.addEventListener("DOMContentLoaded", start);
