/* Batchpress console: a small client of /api/v1 (no framework, no build step).
 * The API key, when the server needs one, lives in sessionStorage only (this tab) and is sent
 * as a bearer token; the events stream gets a short-lived token instead, since an EventSource
 * cannot send headers. */
"use strict";

const API = "/api/v1";
const KEY_SLOT = "batchpress.apiKey";
const body = document.body;
const authRequired = body.dataset.authRequired === "true";
const $ = (id) => document.getElementById(id);
const FINISHED = ["completed", "completed_with_errors", "failed", "cancelled"];

function apiKey() { return sessionStorage.getItem(KEY_SLOT); }

/** A problem+json answer as one readable message. */
class ApiProblem extends Error {
  constructor(status, problem) {
    const parts = [problem.title || ("HTTP " + status)];
    if (problem.detail) parts.push(problem.detail);
    if (problem.missing_columns) parts.push("missing: " + problem.missing_columns.join(", "));
    super(parts.join(": "));
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  let response;
  try {
    response = await fetch(path.startsWith("/") ? path : API + "/" + path,
                           Object.assign({}, options, {headers}));
  } catch (error) {
    throw new ApiProblem(0, {title: "The server cannot be reached", detail: String(error.message || error)});
  }
  if (response.status === 401 && authRequired) {
    sessionStorage.removeItem(KEY_SLOT);
    showLogin("Your API key was refused; sign in again.");
  }
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch (_) { problem = {title: "HTTP " + response.status}; }
    throw new ApiProblem(response.status, problem);
  }
  return response;
}

async function apiJson(path, options) { return (await api(path, options)).json(); }

// --- small helpers ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " kB";
  return (n / 1024 / 1024).toFixed(1) + " MB";
}

function percent(fraction) { return Math.floor(fraction * 100) + " %"; }

// While the file is still being read the totals grow, and a share of them reaches 100 % each
// time the workers catch up: the bar moves without a value and says so instead.
function reading(batch) {
  return !FINISHED.includes(batch.status) && batch.rows.done_reading === false;
}

function showProgress(bar, label, batch) {
  if (reading(batch)) {
    bar.removeAttribute("value");  // an indeterminate <progress>
    label.textContent = "reading file";
  } else {
    bar.value = batch.progress;
    label.textContent = percent(batch.progress);
  }
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

function statusLabel(status) { return status.replace(/_/g, " "); }

function showError(node, error) {
  node.textContent = error ? error.message : "";
  node.hidden = !error;
}

/** Download through fetch, so the bearer key goes along; the file name comes from the server. */
async function download(path, fallbackName) {
  const response = await api(path);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename\*=UTF-8''([^;]+)/i.exec(disposition) || /filename="([^"]+)"/i.exec(disposition);
  const name = match ? decodeURIComponent(match[1]) : fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", {href: url, download: name, hidden: true});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** RFC 4180 CSV, enough for errors.csv (quotes, commas and newlines inside fields). */
function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}

// --- sign-in ---------------------------------------------------------------------------------

function showLogin(message) {
  $("app").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  showError($("login-error"), message ? new Error(message) : null);
  $("api-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) { showError($("login-error"), new Error("Enter an API key.")); return; }
  const response = await fetch(API + "/batches?limit=1", {headers: {Authorization: "Bearer " + key}});
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch (_) { /* not JSON */ }
    showError($("login-error"), new ApiProblem(response.status, problem));
    return;
  }
  sessionStorage.setItem(KEY_SLOT, key);
  $("api-key").value = "";
  if (started) location.reload(); else start();
}

function signOut() {
  sessionStorage.removeItem(KEY_SLOT);
  location.reload();
}

// --- home: upload and the batches list ------------------------------------------------------

let listCursor = null;
let listTimer = null;

function progressCell(batch) {
  const bar = el("progress", {max: 1, "aria-label": "Progress of " + (batch.filename || batch.id)});
  const label = el("span", {});
  showProgress(bar, label, batch);
  return el("td", {}, bar, " ", label);
}

function batchRow(batch) {
  return el("tr", {"data-batch-id": batch.id},
    el("td", {text: when(batch.created_at)}),
    el("td", {}, el("a", {href: "/batches/" + encodeURIComponent(batch.id),
                           text: batch.filename || batch.id})),
    el("td", {}, el("span", {class: "status s-" + batch.status, text: statusLabel(batch.status)})),
    progressCell(batch),
    el("td", {text: batch.images.processed + " / " + batch.images.total +
                    (batch.images.failed ? " (" + batch.images.failed + " failed)" : "")}));
}

async function loadBatches(append) {
  const params = new URLSearchParams({limit: "20"});
  const status = $("status-filter").value;
  if (status) params.set("status", status);
  if (append && listCursor) params.set("cursor", listCursor);
  try {
    const page = await apiJson("batches?" + params);
    const tbody = document.querySelector("#batches tbody");
    if (!append) tbody.replaceChildren();
    page.items.forEach((b) => tbody.append(batchRow(b)));
    listCursor = page.next_cursor;
    $("batches-more").hidden = !listCursor;
    $("batches-empty").hidden = tbody.children.length > 0;
    showError($("list-error"), null);
    // Live: while anything shown is still running, look again in a moment.
    clearTimeout(listTimer);
    if (!append && page.items.some((b) => !FINISHED.includes(b.status))) {
      listTimer = setTimeout(() => loadBatches(false), 2000);
    }
  } catch (error) {
    if (error.status !== 401) showError($("list-error"), error);
  }
}

async function upload(event) {
  event.preventDefault();
  const file = $("csv-file").files[0];
  const errorBox = $("upload-error");
  if (!file) { showError(errorBox, new Error("Choose a CSV file first.")); $("csv-file").focus(); return; }
  const form = new FormData();
  form.append("file", file, file.name);
  const webhook = $("webhook-url").value.trim();
  if (webhook) form.append("webhook_url", webhook);
  const sizes = $("sizes").value.trim();  // empty: not sent, so DEFAULT_SIZES applies
  if (sizes) form.append("sizes", sizes);
  if ($("sizes-only").checked) form.append("full_size", "false");
  $("upload-button").disabled = true;
  try {
    const batch = await apiJson("batches", {method: "POST", body: form});
    location.assign("/batches/" + encodeURIComponent(batch.id));
  } catch (error) {
    showError(errorBox, error);
    errorBox.focus();
  } finally {
    $("upload-button").disabled = false;
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) $("csv-file").files = e.dataTransfer.files;
  });
}

function startHome() {
  $("upload-form").addEventListener("submit", upload);
  $("status-filter").addEventListener("change", () => loadBatches(false));
  $("batches-more").addEventListener("click", () => loadBatches(true));
  $("upload-error").tabIndex = -1;
  setUpDropZone();
  loadBatches(false);
}

// --- one batch ---------------------------------------------------------------------------------

const batchId = body.dataset.batchId;
let current = null;
let events = null;
let productsCursor = null;
let refreshTimer = null;

function showBatch(batch) {
  current = batch;
  $("batch-title").textContent = batch.filename || "Batch";
  $("created").textContent = when(batch.created_at);
  const status = $("status");
  status.textContent = statusLabel(batch.status);
  status.className = "status s-" + batch.status;
  showProgress($("progress"), $("progress-label"), batch);
  $("rows").textContent = batch.rows.total + " (" + batch.rows.valid + " valid, " + batch.rows.invalid + " rejected)";
  $("images").textContent = batch.images.processed + " / " + batch.images.total + " done" +
    (batch.images.failed ? ", " + batch.images.failed + " failed" : "") +
    (batch.images.reused ? ", " + batch.images.reused + " reused" : "");
  // The batch's own totals: every processed image, not only the products on this page.
  $("bytes").textContent = bytes(batch.bytes.in) + " → " + bytes(batch.bytes.out);
  $("saved").textContent = batch.saving_percent === null ? "–" : Math.round(batch.saving_percent) + " %";
  const errorBox = $("batch-error");
  errorBox.textContent = batch.error || "";
  errorBox.hidden = !batch.error;
  const finished = FINISHED.includes(batch.status);
  $("cancel").disabled = finished;
  $("retry").disabled = !(finished && batch.status !== "cancelled" && batch.images.failed > 0);
  body.dataset.status = batch.status;
}

function imageCell(product, image, index) {
  const label = product.product_name + ", image " + (index + 1);
  const before = el("a", {href: image.input_url, target: "_blank", rel: "noopener noreferrer",
                          title: "Open the original"},
    el("img", {src: image.input_url, alt: "Before: " + label, class: "thumb before",
               loading: "lazy", referrerpolicy: "no-referrer"}));
  let after;
  if (image.output_url) {
    after = el("a", {href: image.output_url, target: "_blank", rel: "noopener", title: "Open the compressed image"},
      el("img", {src: image.output_url, alt: "After: " + label, class: "thumb after", loading: "lazy"}));
  } else {
    after = el("span", {class: "thumb none", text: image.status === "pending" ? "…" : "—"});
  }
  let note;
  if (image.status === "failed") note = el("span", {class: "error", text: image.error || "failed"});
  else if (image.bytes_out !== null && image.bytes_in) {
    note = el("span", {class: "sizes",
      text: bytes(image.bytes_in) + " → " + bytes(image.bytes_out) + " (−" +
            Math.round((1 - image.bytes_out / image.bytes_in) * 100) + " %)"});
  } else note = el("span", {class: "hint", text: image.status});
  // A re-import copies earlier outputs instead of encoding: say so beside the bytes.
  const reused = image.reused ? el("span", {class: "hint reused", text: " · reused"}) : null;
  // The batch's extra sizes (`sizes=thumb=200,…`): one link each, named as asked.
  const sizes = Object.entries(image.sizes || {});
  const sizeLinks = sizes.length ? el("span", {class: "size-links"}, "Sizes: ",
    ...sizes.flatMap(([name, url], i) => [i ? " · " : null,
      el("a", {href: url, target: "_blank", rel: "noopener", text: name,
               "aria-label": name + " size of " + label})]).filter((n) => n !== null)) : null;
  return el("figure", {class: "pair s-" + image.status}, before, el("span", {"aria-hidden": "true", text: "→"}), after,
            el("figcaption", {}, note, reused, sizeLinks));
}

async function loadProducts(append) {
  const params = new URLSearchParams({limit: "100"});
  if (append && productsCursor) params.set("cursor", productsCursor);
  const page = await apiJson("batches/" + encodeURIComponent(batchId) + "/products?" + params);
  const tbody = document.querySelector("#products tbody");
  if (!append) tbody.replaceChildren();
  for (const product of page.items) {
    tbody.append(el("tr", {"data-line": product.line},
      el("td", {text: product.line}), el("td", {text: product.serial_no}),
      el("td", {text: product.product_name}),
      el("td", {class: "images"}, ...product.images.map((im, i) => imageCell(product, im, i)))));
  }
  productsCursor = page.next_cursor;
  $("products-more").hidden = !productsCursor;
}

async function loadRejected() {
  const response = await api("batches/" + encodeURIComponent(batchId) + "/errors.csv");
  const rows = parseCsv(await response.text()).slice(1).filter((r) => r.length >= 4 && r[2] === "");
  const tbody = document.querySelector("#rejected tbody");
  tbody.replaceChildren(...rows.map((r) => el("tr", {}, el("td", {text: r[0]}), el("td", {text: r[1]}),
                                                   el("td", {class: "error", text: r[3]}))));
  $("rejected-section").hidden = rows.length === 0;
}

async function loadDeliveries() {
  const page = await apiJson("batches/" + encodeURIComponent(batchId) + "/deliveries");
  const tbody = document.querySelector("#deliveries tbody");
  tbody.replaceChildren();
  for (const d of page.items) {
    const last = d.attempts && d.attempts.length ? d.attempts[d.attempts.length - 1] : null;
    const result = last ? (last.status_code ? "HTTP " + last.status_code : (last.error || "–")) +
                          " at " + when(last.at) : "–";
    tbody.append(el("tr", {"data-delivery-id": d.id},
      el("td", {text: d.event}), el("td", {class: "url", text: d.url}),
      el("td", {text: d.status}), el("td", {text: d.attempt_count}), el("td", {text: result}),
      el("td", {}, el("button", {type: "button", class: "secondary", text: "Redeliver",
                                 "aria-label": "Redeliver " + d.event + " to " + d.url,
                                 onclick: () => redeliver(d.id)}))));
  }
  $("deliveries-empty").hidden = page.items.length > 0;
}

async function redeliver(deliveryId) {
  await act(async () => {
    await api("deliveries/" + encodeURIComponent(deliveryId) + "/redeliver", {method: "POST"});
    say("Delivery queued again.");
    setTimeout(() => loadDeliveries().catch(() => {}), 1000);
  });
}

function say(message, isError) {
  const box = $("action-message");
  box.textContent = message;
  box.classList.toggle("error", !!isError);
}

async function act(work) {
  try { await work(); } catch (error) { say(error.message, true); }
}

/** Everything below the header: at most every 1.5 s while the batch runs, and at the end. */
function loadDetails() {
  return Promise.all([loadProducts(false), loadRejected(), loadDeliveries()])
    .catch((error) => { if (error.status !== 401) say(error.message, true); });
}

function scheduleDetails() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; loadDetails(); }, 1500);
}

function refreshDetails() {
  clearTimeout(refreshTimer);
  refreshTimer = null;
  return loadDetails();
}

async function openEvents() {
  if (events) events.close();
  const grant = await apiJson("batches/" + encodeURIComponent(batchId) + "/events-token", {method: "POST"});
  const source = new EventSource(grant.events_url);
  events = source;
  source.addEventListener("progress", (e) => {
    showBatch(JSON.parse(e.data));
    scheduleDetails();
  });
  source.addEventListener("status", (e) => {
    source.close();
    events = null;
    showBatch(JSON.parse(e.data));
    refreshDetails();
  });
  source.addEventListener("error", () => {
    // A closed stream (e.g. an expired token, or the server's time limit) is opened again with a
    // fresh token; an open one reconnects by itself.
    if (source.readyState === EventSource.CLOSED && events === source && !FINISHED.includes(current.status)) {
      setTimeout(() => openEvents().catch((error) => say(error.message, true)), 2000);
    }
  });
}

function watch() {
  openEvents().catch((error) => say(error.message, true));
}

async function startBatch() {
  try {
    showBatch(await apiJson("batches/" + encodeURIComponent(batchId)));
  } catch (error) {
    if (error.status !== 401) { say(error.message, true); }
    return;
  }
  refreshDetails();
  if (!FINISHED.includes(current.status)) watch();
  $("cancel").addEventListener("click", () => act(async () => {
    showBatch(await apiJson("batches/" + encodeURIComponent(batchId) + "/cancel", {method: "POST"}));
    say("Batch cancelled.");
    refreshDetails();
  }));
  $("retry").addEventListener("click", () => act(async () => {
    showBatch(await apiJson("batches/" + encodeURIComponent(batchId) + "/retry", {method: "POST"}));
    say("Retrying the failed images.");
    watch();
  }));
  $("products-more").addEventListener("click", () => act(() => loadProducts(true)));
  const base = "batches/" + encodeURIComponent(batchId);
  // Downloads come back as the file was uploaded (a `;`-locale Excel's opens again as it was).
  const asUploaded = "?delimiter=input&bom=input";
  $("dl-output").addEventListener("click", () => act(() => download(base + "/output.csv" + asUploaded, "output.csv")));
  $("dl-errors").addEventListener("click", () => act(() => download(base + "/errors.csv" + asUploaded, "errors.csv")));
  $("dl-zip").addEventListener("click", () => act(() => download(base + "/outputs.zip", "images.zip")));
}

// --- start -------------------------------------------------------------------------------------

let started = false;

function start() {
  if (authRequired && !apiKey()) { showLogin(); return; }
  $("login").hidden = true;
  $("app").hidden = false;
  if (authRequired) {
    $("who").hidden = false;
    $("who-name").textContent = "Signed in with an API key";
  }
  if (started) return;
  started = true;
  if (body.dataset.page === "batch") startBatch(); else startHome();
}

$("login-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
start();
