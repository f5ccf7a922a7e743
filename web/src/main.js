// xory's page: many photos to an xory (Gradio) server through the Gradio JS client, a few at a time.
// Each photo gets a card: thumbnail, the answer with confidence bars, the faces boxed and named over the photo
// (from /predict_faces, the `xory predict --json` object), and a heat-map toggle when the server has /explain.
// One photo failing shows its own error; the others go on.
import { Client } from "./gradio-client.js";

const DEFAULT_CONCURRENCY = 4;
const MAX_CONCURRENCY = 8;
const PALETTE = ["#d6336c", "#1c7ed6", "#2b8a3e", "#e8590c", "#7048e8", "#0c8599"];
const NEITHER = "neither";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) if (c != null) node.append(c);
  return node;
};
const pct = (x) => `${Math.round(x * 100)}%`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The server: ?api=URL, else the site's <meta name="xory-api">, else the origin this page is served from. */
export function apiUrl(loc = window.location) {
  const fromQuery = new URLSearchParams(loc.search).get("api");
  const fromMeta = document.querySelector('meta[name="xory-api"]')?.content;
  return (fromQuery || fromMeta || loc.origin).replace(/\/+$/, "") + "/";
}

function concurrencyFromQuery() {
  const n = parseInt(new URLSearchParams(window.location.search).get("concurrency") ?? "", 10);
  return Number.isFinite(n) ? Math.min(Math.max(n, 1), MAX_CONCURRENCY) : DEFAULT_CONCURRENCY;
}

const state = {
  url: "",
  client: null,
  explain: null, // the explanation endpoint's name when the server has one
  groups: [],
  generation: 0, // bumped on each (re)connect so an old connection loop stops
  concurrency: DEFAULT_CONCURRENCY,
  running: 0,
  peak: 0, // the most photos in flight at once (the bound is `concurrency`)
  queue: [],
  items: [],
  nextId: 1,
};

// ---------------------------------------------------------------- server status

function setStatus(kind, text) {
  const s = $("status");
  s.dataset.state = kind;
  s.textContent = text;
}

function messageText(m) {
  if (!m) return "";
  if (typeof m === "string") return m;
  if (Array.isArray(m)) return m.map((v) => v.message ?? String(v)).join("; ");
  return m.message || m.title || String(m);
}

function spaceStatusText(s) {
  // A Hugging Face Space that is building or waking up reports its stage here.
  const stage = (s.status || s.stage || "").toString().toLowerCase();
  const detail = messageText(s.message) || stage;
  return `Server ${state.url} is starting: ${detail}`;
}

async function connect(url) {
  const generation = ++state.generation;
  state.url = url;
  state.client?.close?.();
  state.client = null;
  state.explain = null;
  $("api").value = url;
  for (let attempt = 1; generation === state.generation; attempt++) {
    setStatus("connecting", attempt === 1 ? `Connecting to ${url}…` : `Connecting to ${url}… (try ${attempt})`);
    try {
      const client = await Client.connect(url, {
        events: ["data", "status"], // status too: queue position, and the error of a photo that failed
        status_callback: (s) => setStatus("starting", spaceStatusText(s)),
      });
      const info = await client.view_api();
      const names = Object.keys(info?.named_endpoints ?? {});
      if (!names.includes("/predict_faces")) {
        setStatus("error", `${url} is a Gradio app without a /predict_faces endpoint: not an xory server.`);
        return;
      }
      if (generation !== state.generation) return client.close?.();
      state.client = client;
      state.explain = names.includes("/explain") ? "/explain" : null;
      const title = client.config?.title;
      if (title && title !== "Gradio") {
        $("title").textContent = title;
        document.title = `${title} · xory`;
      }
      setStatus("ready", `Connected to ${url}` + (state.explain ? " (heat maps available)" : ""));
      pump();
      return;
    } catch (e) {
      const wait = Math.min(2 ** attempt, 15);
      setStatus("waiting", `Cannot reach ${url} yet (${messageText(e) || e}); trying again in ${wait} s.`);
      await sleep(wait * 1000);
    }
  }
}

// ---------------------------------------------------------------- photos in

function addFiles(files) {
  for (const file of files) enqueue(newItem(file.name || "pasted photo", file));
}

async function addUrl(raw) {
  const url = raw.trim();
  if (!url) return;
  let name = url;
  try {
    name = decodeURIComponent(new URL(url, window.location.href).pathname.split("/").pop()) || url;
  } catch {
    /* keep the raw text as the name */
  }
  const item = newItem(name, null);
  setItem(item, "fetching", "Downloading the image…");
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`the address answered HTTP ${response.status}`);
    const blob = await response.blob();
    item.file = new File([blob], name, { type: blob.type });
    showThumbnail(item);
    enqueue(item);
  } catch (e) {
    const why = e instanceof TypeError ? "unreachable, or the other site does not allow it (CORS)" : messageText(e);
    fail(item, `could not download ${url}: ${why}`);
  }
}

function newItem(name, file) {
  const item = { id: state.nextId++, name, file, result: null, heat: null };
  item.card = renderCard(item);
  state.items.push(item);
  $("results").append(item.card);
  if (file) showThumbnail(item);
  updateSummary();
  return item;
}

function enqueue(item) {
  setItem(item, "waiting", state.client ? "Waiting for a free slot…" : "Waiting for the server…");
  state.queue.push(item);
  pump();
}

// ---------------------------------------------------------------- bounded parallel sending

function pump() {
  while (state.client && state.running < state.concurrency && state.queue.length) {
    const item = state.queue.shift();
    state.running++;
    state.peak = Math.max(state.peak, state.running);
    classify(item).finally(() => {
      state.running--;
      pump();
    });
  }
}

async function classify(item) {
  setItem(item, "sending", "Sending…");
  try {
    let result = null;
    for await (const msg of state.client.submit("/predict_faces", { img: item.file })) {
      if (msg.type === "data") result = msg.data[0];
      else if (msg.type === "status") {
        if (msg.stage === "error") throw new Error(messageText(msg.message) || "the server could not classify it");
        if (msg.stage === "pending" && msg.original_msg === "process_starts") setItem(item, "running", "Classifying…");
        else if (msg.stage === "pending" && msg.position != null)
          setItem(item, "queued", `In the server's queue: ${msg.position + 1} of ${msg.size ?? "?"}`);
        else if (msg.stage === "pending") setItem(item, "queued", "In the server's queue…");
        else if (msg.stage === "generating" || msg.stage === "streaming") setItem(item, "running", "Classifying…");
      }
    }
    if (!result) throw new Error("the server sent no answer");
    if (result.error) throw new Error(`${result.path}: ${result.error}`);
    await showResult(item, result);
  } catch (e) {
    fail(item, messageText(e) || String(e));
  }
}

// ---------------------------------------------------------------- cards

function renderCard(item) {
  const img = el("img", { className: "photo", alt: `Photo ${item.name}` });
  const boxes = el("div", { className: "boxes" });
  const heat = el("img", { className: "heat", alt: "", hidden: true });
  const frame = el("div", { className: "frame" }, img, heat, boxes);
  const heatToggle = el("input", { type: "checkbox", id: `heat-${item.id}`, className: "heat-toggle" });
  heatToggle.addEventListener("change", () => toggleHeat(item, heatToggle.checked));
  const card = el(
    "li",
    { className: "card", id: `photo-${item.id}` },
    el("figure", {}, frame, el("figcaption", { className: "name", textContent: item.name })),
    el("p", { className: "state", role: "status" }),
    el("div", { className: "answer" }),
    el("ul", { className: "bars", ariaLabel: "Confidence for each answer" }),
    el("ul", { className: "faces", ariaLabel: "Faces" }),
    el("label", { className: "heat-label", hidden: true }, heatToggle, " Heat map: why this answer"),
  );
  card.dataset.state = "new";
  Object.assign(item, { img, boxes, heatImg: heat, heatToggle });
  return card;
}

function showThumbnail(item) {
  item.objectUrl = URL.createObjectURL(item.file);
  item.img.src = item.objectUrl;
  item.img.addEventListener("error", () => item.card.classList.add("no-preview"), { once: true });
}

function setItem(item, kind, text) {
  item.card.dataset.state = kind;
  item.card.querySelector(".state").textContent = text;
  updateSummary();
}

function fail(item, message) {
  item.card.querySelector(".answer").replaceChildren(el("p", { className: "error", textContent: message }));
  setItem(item, "error", "Failed");
  item.img.alt = `Photo ${item.name}: ${message}`;
}

function groupColor(group) {
  if (!group || group === NEITHER) return "#868e96";
  const i = state.groups.indexOf(group);
  return PALETTE[(i >= 0 ? i : state.groups.push(group) - 1) % PALETTE.length];
}

// "done" only once the boxes are on the photo, so a reader (or a test) never sees a half-drawn card.
async function showResult(item, r) {
  item.result = r;
  for (const k of Object.keys(r.confidences).sort()) if (!state.groups.includes(k)) state.groups.push(k); // stable colours
  const entries = Object.entries(r.confidences);
  const best = r.confidences[r.label] ?? 0;
  item.card.dataset.label = r.label;
  item.card.querySelector(".answer").replaceChildren(
    el("span", { className: "label", textContent: r.label }),
    el("span", { className: "confidence", textContent: ` ${pct(best)}` }),
  );
  item.card.querySelector(".bars").replaceChildren(
    ...entries.map(([name, p]) => {
      const id = `bar-${item.id}-${name}`.replace(/[^\w-]/g, "_");
      const meter = el("meter", { id, min: 0, max: 1, value: p });
      meter.style.setProperty("--bar", groupColor(name));
      return el("li", {}, el("label", { htmlFor: id, textContent: name }), meter, el("span", { textContent: pct(p) }));
    }),
  );
  const faceList = item.card.querySelector(".faces");
  if (r.faces.length) {
    faceList.replaceChildren(
      ...r.faces.map((f) =>
        el("li", { className: "face" },
          el("span", { className: "face-name", textContent: f.label }),
          `${f.group && f.group !== f.label ? ` (${f.group})` : ""} ${pct(f.confidence)}`),
      ),
    );
  } else {
    faceList.replaceChildren(el("li", { className: "no-face", textContent: "No face found: judged from the whole photo." }));
  }
  await drawBoxes(item);
  const names = r.faces.map((f) => f.label).join(", ");
  item.img.alt = `Photo ${item.name}: ${r.label}` + (names ? `; faces: ${names}` : "");
  item.card.querySelector(".heat-label").hidden = !state.explain;
  setItem(item, "done", `Done: ${r.faces.length} face${r.faces.length === 1 ? "" : "s"}`);
}

async function drawBoxes(item) {
  const { img, result } = item;
  try {
    await img.decode();
  } catch {
    return; // the browser cannot show this photo; the face list still names everyone
  }
  const w = img.naturalWidth;
  const h = img.naturalHeight;
  item.boxes.replaceChildren(
    ...result.faces.map((f) => {
      const [l, t, r, b] = f.box;
      const tag = result.faces.length > 3 ? f.label : `${f.label} ${pct(f.confidence)}`; // crowded: the list has the %
      const box = el("div", { className: "box" }, el("span", { textContent: tag }));
      Object.assign(box.style, {
        left: `${(100 * l) / w}%`,
        top: `${(100 * t) / h}%`,
        width: `${(100 * (r - l)) / w}%`,
        height: `${(100 * (b - t)) / h}%`,
        borderColor: groupColor(f.group),
      });
      box.firstChild.style.background = groupColor(f.group);
      box.setAttribute("aria-hidden", "true");
      return box;
    }),
  );
}

// ---------------------------------------------------------------- heat maps (only when the server explains)

function findImageUrl(value) {
  if (!value) return null;
  if (typeof value === "string") return /^(data:image\/|https?:\/\/|blob:)/.test(value) ? value : null;
  if (typeof value !== "object") return null;
  if (typeof value.url === "string") return value.url;
  for (const v of Object.values(value)) {
    const found = findImageUrl(v);
    if (found) return found;
  }
  return null;
}

async function toggleHeat(item, on) {
  if (on && !item.heat) {
    item.heatToggle.disabled = true;
    item.card.querySelector(".state").textContent = "Explaining…";
    try {
      const out = await state.client.predict(state.explain, { img: item.file });
      item.heat = findImageUrl(out.data);
      if (!item.heat) throw new Error("the server's explanation has no image");
      item.heatImg.src = item.heat;
      item.heatImg.alt = `Heat map for ${item.name}: the parts of the photo that decided the answer`;
      item.card.querySelector(".state").textContent = "Heat map shown";
    } catch (e) {
      item.card.querySelector(".state").textContent = `No heat map: ${messageText(e) || e}`;
      item.heatToggle.checked = false;
      on = false;
    } finally {
      item.heatToggle.disabled = false;
    }
  }
  item.heatImg.hidden = !on;
  item.heatImg.parentElement.classList.toggle("heat-on", on); // the explanation picture replaces the photo
}

// ---------------------------------------------------------------- summary, inputs, start

function updateSummary() {
  const count = (kind) => state.items.filter((i) => i.card.dataset.state === kind).length;
  const total = state.items.length;
  const done = count("done");
  const failed = count("error");
  $("summary").textContent = total
    ? `${total} photo${total === 1 ? "" : "s"}: ${done} done, ${failed} failed, ${total - done - failed} in progress`
    : "";
  $("clear").hidden = total === 0;
}

function clearFinished() {
  const finished = (i) => ["done", "error"].includes(i.card.dataset.state);
  for (const item of state.items.filter(finished)) {
    if (item.objectUrl) URL.revokeObjectURL(item.objectUrl);
    item.card.remove();
  }
  state.items = state.items.filter((i) => !finished(i));
  updateSummary();
}

function imagesFrom(dataTransfer) {
  return [...(dataTransfer?.files ?? [])];
}

function wireInputs() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => {
    addFiles([...e.target.files]);
    e.target.value = "";
  });
  for (const type of ["dragenter", "dragover"])
    document.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = imagesFrom(e.dataTransfer);
    if (files.length) addFiles(files);
    else {
      const link = e.dataTransfer.getData("text/uri-list") || e.dataTransfer.getData("text/plain");
      if (link) addUrl(link.split("\n")[0]);
    }
  });
  document.addEventListener("paste", (e) => {
    const files = imagesFrom(e.clipboardData);
    if (files.length) {
      e.preventDefault();
      addFiles(files);
    } else if (!(e.target instanceof HTMLInputElement)) {
      const text = e.clipboardData.getData("text/plain").trim();
      if (/^https?:\/\//.test(text)) addUrl(text);
    }
  });
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    addUrl($("url").value);
    $("url").value = "";
  });
  $("server-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const url = $("api").value.trim().replace(/\/+$/, "") + "/";
    const params = new URLSearchParams(window.location.search);
    params.set("api", url);
    history.replaceState(null, "", `?${params}`);
    connect(url);
  });
  const conc = $("concurrency");
  conc.max = MAX_CONCURRENCY;
  conc.value = state.concurrency;
  conc.addEventListener("change", () => {
    const n = parseInt(conc.value, 10);
    state.concurrency = Number.isFinite(n) ? Math.min(Math.max(n, 1), MAX_CONCURRENCY) : DEFAULT_CONCURRENCY;
    conc.value = state.concurrency;
    pump();
  });
  $("clear").addEventListener("click", clearFinished);
}

state.concurrency = concurrencyFromQuery();
wireInputs();
updateSummary();
connect(apiUrl());
// For tests and the curious: the page's state, read-only by convention.
window.xory = { state, connect, addFiles, addUrl };
