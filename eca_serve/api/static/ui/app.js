// The eca-serve demo page: plain JavaScript against the public v1 API, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324", "#469990"];
const MAX_SIDE = 560;
const ROW = 14, LABEL_W = 150, STRIP_W = 420;
let models = [];
let currentFile = null;

function setStatus(text, state) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = state;
}

function selectedModel() {
  return models.find((m) => m.name === $("model").value);
}

// What a model answers is read from its v2 outputs (the page names no task): probabilities -> classify,
// embedding -> embed (pooled features), else detect.
function isClassifier(model) {
  return (model.outputs || []).includes("probabilities");
}

function embeds(model) {
  return (model.outputs || []).includes("embedding");
}

async function describe(model) {
  if (model.outputs) return;
  const response = await fetch(`v2/models/${encodeURIComponent(model.name)}`);
  if (response.ok) model.outputs = (await response.json()).outputs.map((o) => o.name);
}

async function loadModels() {
  const response = await fetch("v1/models");
  // One entry per version: the page asks for a model by name, which answers with its default version.
  const all = (await response.json()).models;
  models = all.filter((m, i) => all.findIndex((n) => n.name === m.name) === i);
  const select = $("model");
  select.innerHTML = "";
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    const versions = `version${m.versions.length > 1 ? "s" : ""} ${m.versions.join(", ")}`;
    option.textContent = `${m.name} (${versions}${m.ready ? "" : ", loading"})`;
    select.appendChild(option);
  }
  onModelChange();
}

async function onModelChange() {
  const model = selectedModel();
  if (!model) {
    setStatus("No model is served.", "error");
    return;
  }
  await describe(model);
  $("model-task").textContent = `${model.task}, ${model.architecture}`;
  $("threshold-label").hidden = isClassifier(model);
  $("topk-label").hidden = !isClassifier(model);
  Session.show(model.name);
  if (currentFile) run(currentFile);
}

async function postImage(path, file) {
  const response = await fetch(path, {
    method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`${response.status}: ${body.error || response.statusText}`);
  return body;
}

async function run(file) {
  currentFile = file;
  const model = selectedModel();
  if (!model) return;
  setStatus(`Running ${model.name} on ${file.name}...`, "busy");
  try {
    await describe(model);
    const image = await loadImage(file);
    const name = encodeURIComponent(model.name);
    const topK = Number($("topk-count").value);
    const k = topK > 0 ? `top_k=${topK}&` : "";  // unset: the server's default, min(5, classes)
    const threshold = Number($("threshold").value);
    const main = isClassifier(model)
      ? await postImage(`v1/models/${name}/classify?${k}`, file)
      : await postImage(`v1/models/${name}/detect?score_threshold=${threshold}&masks=polygon`, file);
    const attention = await postImage(`v1/models/${name}/attention?${k}score_threshold=${threshold}`, file);
    $("results").hidden = false;
    if (isClassifier(model)) showClassification(image, main.results[0]);
    else showDetections(image, main.results[0]);
    drawAttention(attention.results[0].layers);
    Session.record(model.name, attention.results[0]);  // the same answer: no extra request per image
    $("embedding").hidden = !embeds(model);
    if (embeds(model)) showEmbedding(model.name, file.name, (await postImage(`v1/models/${name}/embed`, file)).results[0]);
    showTiming({ [isClassifier(model) ? "classify" : "detect"]: main.timing, attention: attention.timing });
    setStatus(`${model.name} on ${file.name}: done.`, "done");
  } catch (err) {
    setStatus(`Failed: ${err.message}`, "error");
  }
}

// Unit vectors of the images embedded in this tab, per model (kept here, in memory, never sent anywhere).
const embedded = new Map();

function showEmbedding(model, filename, result) {
  const previous = embedded.get(model) || [];
  let nearest = null;
  for (const other of previous) {
    const cosine = other.vector.reduce((sum, v, i) => sum + v * result.embedding[i], 0);
    if (!nearest || cosine > nearest.cosine) nearest = { filename: other.filename, cosine };
  }
  previous.push({ filename, vector: result.embedding });
  embedded.set(model, previous.slice(-200));
  const el = $("embedding");
  el.dataset.norm = String(result.norm);
  el.dataset.nearest = nearest ? nearest.filename : "";
  el.textContent = `Embedding: ${result.dimension} dimensions, norm ${result.norm.toFixed(3)}; ` + (nearest
    ? `nearest earlier image: ${nearest.filename} (cosine ${nearest.cosine.toFixed(3)})`
    : "the first image of this session (nothing to compare yet)");
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this file"));
    img.src = URL.createObjectURL(file);
  });
}

function drawImage(image) {
  const canvas = $("overlay");
  const scale = Math.min(1, MAX_SIDE / Math.max(image.naturalWidth, image.naturalHeight)) * (image.naturalWidth < 200 ? 2 : 1);
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  return { ctx, scale };
}

function showClassification(image, result) {
  drawImage(image);
  $("overlay").dataset.instances = "0";
  $("result-title").textContent = "Top-k classes";
  $("detections").innerHTML = "";
  const list = $("topk");
  list.innerHTML = "";
  for (const p of result.predictions) {
    const item = document.createElement("li");
    item.dataset.label = p.label;
    item.textContent = `${p.label} ${(100 * p.score).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(120 * p.score)}px`;
    item.appendChild(bar);
    list.appendChild(item);
  }
}

function showDetections(image, result) {
  const { ctx } = drawImage(image);
  const sx = ctx.canvas.width / result.width, sy = ctx.canvas.height / result.height;
  $("topk").innerHTML = "";
  $("result-title").textContent = `${result.detections.length} detection(s)`;
  const labels = [];  // placed label boxes [x, y, w, h]: each new one moves down until it overlaps none
  result.detections.forEach((d, i) => drawInstance(ctx, d, PALETTE[i % PALETTE.length], sx, sy, labels));
  $("overlay").dataset.instances = String(result.detections.length);
  $("overlay").dataset.labels = JSON.stringify(labels);
  const rows = result.detections.map((d, i) =>
    `<tr><td><span class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></span>${escapeHtml(d.category)}</td>` +
    `<td>${d.score.toFixed(3)}</td><td>${d.box.map((v) => v.toFixed(0)).join(", ")}</td></tr>`);
  $("detections").innerHTML = "<tr><th>category</th><th>score</th><th>box (x1, y1, x2, y2)</th></tr>" + rows.join("");
}

function drawInstance(ctx, detection, color, sx, sy, labels) {
  ctx.save();
  ctx.fillStyle = color;
  ctx.globalAlpha = 0.4;
  for (const polygon of detection.mask || []) {
    ctx.beginPath();
    for (let k = 0; k < polygon.length; k += 2) ctx.lineTo(polygon[k] * sx, polygon[k + 1] * sy);
    ctx.closePath();
    ctx.fill();
  }
  ctx.globalAlpha = 1;
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  const [x1, y1, x2, y2] = detection.box;
  ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
  const label = `${detection.category} ${detection.score.toFixed(2)}`;
  ctx.font = "12px sans-serif";
  const [w, h] = [Math.ceil(ctx.measureText(label).width) + 6, 15];
  const x = Math.max(0, Math.min(x1 * sx, ctx.canvas.width - w));  // never clipped at the right edge
  let y = Math.max(0, y1 * sy - h);
  const hits = (b) => x < b[0] + b[2] && b[0] < x + w && y < b[1] + b[3] && b[1] < y + h;
  for (let hit = labels.find(hits); hit; hit = labels.find(hits)) y = hit[1] + hit[3];
  y = Math.min(y, ctx.canvas.height - h);
  labels.push([x, y, w, h]);
  ctx.fillRect(x, y, w, h);
  ctx.fillStyle = "#fff";
  ctx.fillText(label, x + 3, y + 11);
  ctx.restore();
}

// Weight in [0, 1] -> a dark-blue to yellow ramp (readable for colour-blind viewers, like viridis).
function heat(w) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(1, Math.max(0, w)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x)), t = x - i;
  const c = stops[i].map((v, k) => Math.round(v + t * (stops[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawAttention(layers) {
  const canvas = $("attention");
  canvas.width = LABEL_W + STRIP_W;
  canvas.height = Math.max(1, layers.length) * ROW;
  const ctx = canvas.getContext("2d");
  ctx.font = "11px monospace";
  layers.forEach((layer, row) => {
    const y = row * ROW, cell = STRIP_W / layer.weights.length;
    ctx.fillStyle = "#1d2330";
    ctx.fillText(layer.name, 2, y + ROW - 3, LABEL_W - 6);
    layer.weights.forEach((w, c) => {
      ctx.fillStyle = heat(w);
      ctx.fillRect(LABEL_W + c * cell, y + 1, Math.ceil(cell), ROW - 2);
    });
  });
  canvas.dataset.layers = String(layers.length);
}

function showTiming(timings) {
  const stages = ["preprocess_ms", "queue_ms", "inference_ms", "postprocess_ms"];
  const header = "<tr><th>request</th>" + stages.map((s) => `<th>${s.replace("_ms", "")}</th>`).join("") + "</tr>";
  const rows = Object.entries(timings).map(([name, t]) =>
    `<tr><td>${name}</td>` + stages.map((s) => `<td>${t[s].toFixed(1)}</td>`).join("") + "</tr>");
  $("timing").innerHTML = header + rows.join("");
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

function wireDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) run(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => { if (e.target.files.length) run(e.target.files[0]); });
  $("model").addEventListener("change", onModelChange);
  for (const id of ["threshold", "topk-count"]) $(id).addEventListener("change", () => { if (currentFile) run(currentFile); });
}

wireDrop();
loadModels().catch((err) => setStatus(`Cannot list models: ${err.message}`, "error"));
