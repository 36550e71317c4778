// fastadapt serve: draw a few examples per class, draw a query, see it classified (POST /api/classify);
// "find it": draw a symbol, see it found in a cluttered scene (POST /api/find).
"use strict";

const PEN_WIDTH = 9;             // canvas pixels (canvases are 210 wide); the server redraws any width
const DEBOUNCE_MS = 40;          // a classification starts this long after the last change
const LABELS = "ABCDEFGHIJKLMNOPQRST";
const CURVE_TITLES = {loss: "training loss", accuracy: "training accuracy", val_accuracy: "validation accuracy"};

const state = {model: null, classes: [], query: null, version: 0, timer: null, inFlight: null};

// ---- a drawing canvas: strokes from mouse, touch or pen; undo, clear, an uploaded image underneath ----
class Pad {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.strokes = [];
    this.picture = null;           // an uploaded image shown instead of strokes
    this.onChange = onChange;
    this.current = null;
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      canvas.addEventListener(type, () => this.up());
    }
    this.redraw();
  }
  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * this.canvas.width / box.width,
            (event.clientY - box.top) * this.canvas.height / box.height];
  }
  down(event) {
    if (event.button !== undefined && event.button > 0) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    if (this.picture) { this.picture = null; this.redraw(); }
    this.current = [this.point(event)];
    this.strokes.push(this.current);
    this.drawStroke(this.current);
  }
  move(event) {
    if (!this.current) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of (events.length ? events : [event])) this.current.push(this.point(e));
    this.drawStroke(this.current.slice(-events.length - 1));
  }
  up() {
    if (!this.current) return;
    this.current = null;
    this.onChange();
  }
  drawStroke(points) {
    const c = this.context;
    c.strokeStyle = c.fillStyle = "#000";
    c.lineWidth = PEN_WIDTH;
    c.lineCap = c.lineJoin = "round";
    if (points.length === 1) {
      c.beginPath();
      c.arc(points[0][0], points[0][1], PEN_WIDTH / 2, 0, 2 * Math.PI);
      c.fill();
      return;
    }
    c.beginPath();
    c.moveTo(points[0][0], points[0][1]);
    for (const [x, y] of points.slice(1)) c.lineTo(x, y);
    c.stroke();
  }
  redraw() {
    const c = this.context;
    c.fillStyle = "#fff";
    c.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (this.picture) {
      const scale = Math.min(this.canvas.width / this.picture.width, this.canvas.height / this.picture.height);
      const w = this.picture.width * scale, h = this.picture.height * scale;
      c.drawImage(this.picture, (this.canvas.width - w) / 2, (this.canvas.height - h) / 2, w, h);
    }
    for (const stroke of this.strokes) this.drawStroke(stroke);
  }
  undo() { if (this.picture && !this.strokes.length) this.picture = null; else this.strokes.pop(); this.redraw(); this.onChange(); }
  clear() { this.strokes = []; this.picture = null; this.redraw(); this.onChange(); }
  show(picture) { this.strokes = []; this.picture = picture; this.redraw(); this.onChange(); }
  isEmpty() { return !this.strokes.length && !this.picture; }
  // what the server gets: the canvas as PNG; a drawing is redrawn as the model's training drawings look
  item() { return {image: this.canvas.toDataURL("image/png"), drawn: !this.picture}; }
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const image = new Image();
      image.onload = () => resolve({url: reader.result, image});
      image.onerror = () => reject(new Error(`${file.name} is not an image this browser can read`));
      image.src = reader.result;
    };
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function element(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function buttons(pad, upload) {
  const undo = element("button", {type: "button", text: "undo"});
  const clear = element("button", {type: "button", text: "clear"});
  undo.addEventListener("click", () => pad.undo());
  clear.addEventListener("click", () => pad.clear());
  const input = element("input", {type: "file", accept: "image/*", multiple: "", hidden: ""});
  input.addEventListener("change", async () => {
    try {
      for (const file of input.files) await upload(await readImage(file));
    } catch (error) { say(error.message, true); }
    input.value = "";
  });
  return [undo, clear, element("label", {class: "upload"}, ["upload", input])];
}

// ---- one class: a name, a canvas, and the examples kept so far ----
function makeClass(index) {
  const card = element("div", {class: "class-card", "data-class": String(index)});
  const name = element("input", {type: "text", value: LABELS[index], "aria-label": `name of class ${index + 1}`,
                                 maxlength: "64"});
  const canvas = element("canvas", {width: "210", height: "210", "data-class": String(index),
                                    "aria-label": `draw an example of class ${index + 1}`});
  const examples = element("div", {class: "examples"});
  const entry = {card, name, examples, kept: []};
  entry.pad = new Pad(canvas, changed);
  const keep = element("button", {type: "button", text: "+ another", title: "keep this drawing as an example and draw another"});
  keep.addEventListener("click", () => {
    if (entry.pad.isEmpty()) return;
    addExample(entry, entry.pad.item());
    entry.pad.strokes = []; entry.pad.picture = null; entry.pad.redraw();
    changed();
  });
  const upload = ({url}) => { addExample(entry, {image: url, drawn: false}); changed(); };
  card.append(name, canvas, element("div", {class: "buttons"}, [...buttons(entry.pad, upload), keep]), examples);
  name.addEventListener("input", changed);
  return entry;
}

function addExample(entry, item) {
  entry.kept.push(item);
  const thumb = element("img", {src: item.image, alt: "example", title: "click to remove"});
  thumb.addEventListener("click", () => {
    entry.kept.splice(entry.kept.indexOf(item), 1);
    thumb.remove();
    changed();
  });
  entry.examples.append(thumb);
}

function setClassCount(count) {
  const holder = document.getElementById("classes");
  while (state.classes.length < count) {
    const entry = makeClass(state.classes.length);
    state.classes.push(entry);
  }
  holder.replaceChildren(...state.classes.slice(0, count).map((entry) => entry.card));
  changed();
}

// ---- classifying ----
function request() {
  const count = Number(document.getElementById("num-classes").value);
  const support = [];
  const labels = new Set();
  for (const entry of state.classes.slice(0, count)) {
    const label = entry.name.value.trim() || entry.card.dataset.class;
    const items = [...entry.kept, ...(entry.pad.isEmpty() ? [] : [entry.pad.item()])];
    if (!items.length) continue;
    if (labels.has(label)) return {problem: `two classes are called "${label}": give each its own name`};
    labels.add(label);
    for (const item of items) support.push({label, ...item});
  }
  if (labels.size < 2) return {problem: "draw an example in at least two classes"};
  if (state.query.isEmpty()) return {problem: "now draw a query (or upload one)"};
  return {body: {support, queries: [state.query.item()], invert: "auto", return_inputs: true}};
}

function changed() {
  state.version += 1;
  document.getElementById("result").dataset.current = "false";
  clearTimeout(state.timer);
  state.timer = setTimeout(classify, DEBOUNCE_MS);
}

// One mode's request (mode: its version and inFlight): the reply shown unless the input changed meanwhile,
// an error's message said in red, the time taken said after [busy, done] words.
async function ask(url, body, mode, version, show, say, [busy, done]) {
  const controller = new AbortController();
  mode.inFlight = controller;
  say(busy);
  const started = performance.now();
  try {
    const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(body), signal: controller.signal});
    const reply = await response.json();
    if (version !== mode.version) return;
    if (!response.ok) {
      show(null, version);
      say(reply.error || `error ${response.status}`, true);
      return;
    }
    show(reply, version);
    say(`${done} in ${Math.round(performance.now() - started)} ms (server: ${reply.milliseconds} ms)`);
  } catch (error) {
    if (error.name !== "AbortError" && version === mode.version) say(`the server did not answer: ${error.message}`, true);
  } finally {
    if (mode.inFlight === controller) mode.inFlight = null;
  }
}

async function classify() {
  const version = state.version;
  const {body, problem} = request();
  if (state.inFlight) state.inFlight.abort();
  if (problem) {
    show(null, version);
    say(problem);
    return;
  }
  await ask("/api/classify", body, state, version, show, say, ["classifying…", "classified"]);
}

function show(reply, version) {
  const result = document.getElementById("result");
  const prediction = document.getElementById("prediction");
  const bars = document.getElementById("bars");
  const seen = document.getElementById("seen");
  for (const entry of state.classes) entry.card.classList.remove("best");
  result.dataset.version = String(version);
  result.dataset.current = String(version === state.version);
  if (!reply) {
    prediction.textContent = "–";
    prediction.dataset.class = "";
    bars.replaceChildren();
    seen.replaceChildren();
    return;
  }
  const best = reply.predictions[0];
  prediction.textContent = best.class;
  prediction.dataset.class = best.class;
  const probability = Object.fromEntries(reply.classes.map((label, i) => [label, best.probabilities[i]]));
  const count = Number(document.getElementById("num-classes").value);
  const rows = [];
  for (const entry of state.classes.slice(0, count)) {
    const label = entry.name.value.trim() || entry.card.dataset.class;
    if (!(label in probability)) continue;
    if (label === best.class) entry.card.classList.add("best");
    const fill = element("div", {class: "fill"});
    fill.style.width = `${(100 * probability[label]).toFixed(1)}%`;
    rows.push(element("div", {class: `bar${label === best.class ? " best" : ""}`, "data-label": label}, [
      element("span", {class: "label", text: label}),
      element("div", {class: "track"}, [fill]),
      element("span", {class: "value", text: `${(100 * probability[label]).toFixed(1)}%`})]));
  }
  bars.replaceChildren(...rows);
  if (reply.inputs) {
    seen.replaceChildren("the model sees:", element("img", {src: reply.inputs.queries[0], class: "query", alt: "query as the model sees it"}),
                         ...reply.inputs.support.map((src) => element("img", {src, alt: "example as the model sees it"})));
  }
}

function say(text, error = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

// ---- the model panel ----
function describeModel(model) {
  document.getElementById("model-summary").textContent = model.summary;
  const facts = document.getElementById("model-facts");
  const rows = [["method", model.method], ["trained on", model.dataset + (model.trained ? `, ${model.trained}` : "")],
                ["images", model.preparation], ["drawings", model.drawings]];
  if (model.best_validation_accuracy !== null) {
    rows.push(["best validation accuracy", `${(100 * model.best_validation_accuracy).toFixed(2)}% (${model.validation_episodes} validation episodes)`]);
  }
  facts.replaceChildren(...rows.flatMap(([key, value]) => [element("dt", {text: key}), element("dd", {text: value})]));
  const table = document.getElementById("test-accuracy");
  if (model.test_accuracy && Object.keys(model.test_accuracy).length) {
    table.tBodies[0].replaceChildren(...Object.entries(model.test_accuracy).map(([row, e]) => element("tr", {}, [
      element("td", {text: row}),
      element("td", {text: `${(100 * e.mean).toFixed(2)} ± ${(100 * e.ci95).toFixed(2)}%`}),
      element("td", {text: e.num_tasks ? `${e.num_tasks} episodes` : ""})])));
    table.hidden = false;
  } else if (model.source !== "pixels") {
    const note = document.getElementById("no-test");
    note.textContent = `no test accuracy recorded in the run; record it with: fastadapt eval ${model.run_dir} --json ${model.run_dir}/test_results.json`;
    note.hidden = false;
  }
  const curves = document.getElementById("curves");
  curves.replaceChildren(...Object.entries(model.curves).map(([key, points]) => curve(model.curve_titles[key] || CURVE_TITLES[key] || key, points)));
  const select = document.getElementById("num-classes");
  const [low, high] = model.ways;
  for (let n = low; n <= high; n += 1) select.append(element("option", {value: String(n), text: String(n)}));
  select.value = String(Math.min(high, Math.max(low, 5)));
  select.addEventListener("change", () => setClassCount(Number(select.value)));
  document.getElementById("shot-note").textContent = model.shots ? `this run needs exactly ${model.shots} examples per class` :
    "one or more examples per class: \"+ another\" keeps a drawing and clears the canvas";
  const l = model.limits;
  document.getElementById("limits").textContent = `Limits: ${l.classes[0]}-${l.classes[1]} classes, up to ${l.max_per_class} ` +
    `examples per class, images up to ${l.max_image_side}x${l.max_image_side} pixels and ${l.max_image_bytes / 2 ** 20} MiB ` +
    `(${l.formats.join(", ")}), requests up to ${l.max_body_bytes / 2 ** 20} MiB.`;
  setClassCount(Number(select.value));
}

function curve(title, points) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 230, height = 130, left = 34, right = 6, top = 8, bottom = 18;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => left + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (width - left - right);
  const sy = (y) => top + (y1 > y0 ? (y1 - y) / (y1 - y0) : 0.5) * (height - top - bottom);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  add("line", {x1: left, y1: height - bottom, x2: width - right, y2: height - bottom});
  add("line", {x1: left, y1: top, x2: left, y2: height - bottom});
  add("polyline", {points: points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ")});
  const number = (v) => (Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(1)}k` : `${+v.toPrecision(3)}`);
  add("text", {x: left - 3, y: top + 7, "text-anchor": "end"}, number(y1));
  add("text", {x: left - 3, y: height - bottom, "text-anchor": "end"}, number(y0));
  add("text", {x: left, y: height - 5}, number(x0));
  add("text", {x: width - right, y: height - 5, "text-anchor": "end"}, `${number(x1)} it.`);
  return element("figure", {}, [svg, element("figcaption", {text: title})]);
}

// ---- "find it": a symbol found in a cluttered scene ----
const finding = {pad: null, scene: null, seed: 0, version: 0, timer: null, inFlight: null};

function findChanged() {
  finding.version += 1;
  document.getElementById("find-result").dataset.current = "false";
  clearTimeout(finding.timer);
  finding.timer = setTimeout(find, DEBOUNCE_MS);
}

function sayFound(text, error = false) {
  const status = document.getElementById("find-status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

async function find() {
  const version = finding.version;
  if (finding.inFlight) finding.inFlight.abort();
  if (finding.pad.isEmpty()) {
    showFound(null, version);
    sayFound("draw a symbol to find (or upload one)");
    return;
  }
  const body = {symbol: finding.pad.item(), seed: finding.seed,
                characters: Number(document.getElementById("find-characters").value),
                copies: Number(document.getElementById("find-copies").value),
                scene: finding.scene ? {image: finding.scene} : null};
  await ask("/api/find", body, finding, version, showFound, sayFound, ["searching…", "searched"]);
}

function iou(a, b) {
  const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
  const inter = Math.max(w, 0) * Math.max(h, 0);
  return inter > 0 ? inter / (a[2] * a[3] + b[2] * b[3] - inter) : 0;
}

function showFound(reply, version) {
  const result = document.getElementById("find-result");
  const svg = document.getElementById("find-boxes");
  const list = document.getElementById("find-list");
  const summary = document.getElementById("find-summary");
  result.dataset.version = String(version);
  result.dataset.current = String(version === finding.version);
  if (!reply) {
    for (const id of ["find-scene", "find-mask"]) document.getElementById(id).removeAttribute("src");
    svg.replaceChildren();
    list.replaceChildren();
    summary.textContent = "–";
    result.dataset.boxes = "[]";
    return;
  }
  document.getElementById("find-scene").src = reply.scene;
  document.getElementById("find-mask").src = reply.mask;
  document.getElementById("find-stage").style.aspectRatio = `${reply.width} / ${reply.height}`;
  svg.setAttribute("viewBox", `0 0 ${reply.width} ${reply.height}`);
  const ns = "http://www.w3.org/2000/svg";
  const rect = (box, kind, score) => {
    const node = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({x: box[0], y: box[1], width: box[2], height: box[3], class: kind})) node.setAttribute(k, v);
    if (score !== undefined) node.dataset.score = String(score);
    return node;
  };
  const boxes = reply.detections.map((d) => d.box);
  svg.replaceChildren(...(reply.truth || []).map((box) => rect(box, "truth")),
                      ...reply.detections.map((d) => rect(d.box, "found", d.score)));
  list.replaceChildren(...reply.detections.map((d) => element("li", {
    text: `${d.score.toFixed(3)} at (${d.box.map((v) => Math.round(v)).join(", ")})`})));
  let text = `${reply.detections.length} found`;
  if (reply.truth) {
    const hits = reply.truth.filter((t) => boxes.some((b) => iou(t, b) >= 0.5)).length;
    text += `; ${hits} of ${reply.truth.length} copies boxed (IoU ≥ 0.5)`;
  }
  summary.textContent = text;
  result.dataset.boxes = JSON.stringify(boxes);
}

function startFinding(model) {
  finding.pad = new Pad(document.getElementById("find-canvas"), findChanged);
  document.querySelector("#find-symbol .buttons").replaceChildren(...buttons(finding.pad, ({image}) => finding.pad.show(image)));
  const characters = document.getElementById("find-characters");
  const copies = document.getElementById("find-copies");
  for (const n of [4, 8, 16, 32]) characters.append(element("option", {value: String(n), text: String(n)}));
  for (let n = 1; n <= model.limits.copies[1]; n += 1) copies.append(element("option", {value: String(n), text: String(n)}));
  characters.value = "8";
  copies.value = "2";
  characters.addEventListener("change", findChanged);
  copies.addEventListener("change", findChanged);
  document.getElementById("find-new").addEventListener("click", () => { finding.seed += 1; findChanged(); });
  const drawnScenes = document.getElementById("find-drawn");
  const upload = document.getElementById("find-upload");
  upload.addEventListener("change", async () => {
    try {
      if (upload.files.length) { finding.scene = (await readImage(upload.files[0])).url; drawnScenes.hidden = false; findChanged(); }
    } catch (error) { sayFound(error.message, true); }
    upload.value = "";
  });
  drawnScenes.addEventListener("click", () => { finding.scene = null; drawnScenes.hidden = true; findChanged(); });
  if (!model.find.scenes) sayFound("no Omniglot archives on the server to draw scenes from: upload a scene");
}

async function start() {
  const queryCard = document.getElementById("query");
  state.query = new Pad(document.getElementById("query-canvas"), changed);
  queryCard.querySelector(".buttons").replaceChildren(...buttons(state.query, ({image}) => state.query.show(image)));
  try {
    const response = await fetch("/api/model");
    state.model = await response.json();
    describeModel(state.model);
    startFinding(state.model);
    document.body.dataset.ready = "true";
  } catch (error) {
    say(`could not read the model from the server: ${error.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", start);
