// The demo page's "Session" panels: mean channel attention per predicted class over the images classified
// in this tab (kept here, in memory, never sent anywhere), and the model's drift score per layer over time.
// Charts are inline SVG drawn by hand: no library, no CDN.
"use strict";

const Session = (() => {
  const MAX_IMAGES = 200;  // per model: the oldest image drops out first
  const MAX_POLLS = 120;   // drift points kept per model
  const POLL_MS = 10_000;  // drift also moves with other clients' traffic, so the page polls while it is open
  // Okabe-Ito then Tableau, as `eca-serve attention-stats` draws them: distinct for colour-blind readers.
  const COLOURS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000",
                   "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22"];
  const H = 120, PAD_L = 34, PAD_B = 18, PAD_T = 6, PAD_R = 6;
  const SVG = "http://www.w3.org/2000/svg";
  const images = new Map();  // model -> [{label, layers: [{name, weights}]}]
  const drift = new Map();   // model -> [{t, layers: {name: score|null}, inWindow, minImages}]
  const started = Date.now();
  let shown = null;          // the model the panels show
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  }

  /** One small chart: `series` is [{name, colour, points: [[x, y]]}], y in [0, yMax]; x spans xRange. */
  function lineChart(title, series, xRange, yMax, xLabel, guides = [], W = 300) {
    const figure = document.createElement("figure");
    figure.className = "chart";
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    figure.appendChild(caption);
    const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, figure);
    root.dataset.series = String(series.length);
    const [x0, x1] = xRange;
    const px = (x) => PAD_L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - PAD_L - PAD_R);
    const py = (y) => H - PAD_B - Math.min(1, y / yMax) * (H - PAD_B - PAD_T);
    svg("rect", { x: PAD_L, y: PAD_T, width: W - PAD_L - PAD_R, height: H - PAD_B - PAD_T, class: "frame" }, root);
    const labelled = [];  // y of each tick label: one closer than a line of text to another is left out
    const tick = (y, text) => {
      if (labelled.some((v) => Math.abs(v - py(y)) < 11)) return;
      labelled.push(py(y));
      svg("text", { x: PAD_L - 3, y: py(y) + 4, "text-anchor": "end", class: "tick" }, root).textContent = text;
    };
    tick(0, "0");
    tick(yMax, String(+yMax.toFixed(2)));
    for (const g of guides.filter((v) => v < yMax)) {  // dashed reference levels, e.g. the drift bands
      svg("line", { x1: PAD_L, x2: W - PAD_R, y1: py(g), y2: py(g), class: "guide" }, root);
      tick(g, String(g));
    }
    const xl = svg("text", { x: (PAD_L + W - PAD_R) / 2, y: H - 4, "text-anchor": "middle", class: "tick" }, root);
    xl.textContent = xLabel;
    for (const s of series) {
      const d = s.points.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join("");
      const path = svg("path", { d, stroke: s.colour, class: "series" }, root);
      path.dataset.name = s.name;
      if (s.points.length === 1) svg("circle", { cx: px(s.points[0][0]), cy: py(s.points[0][1]), r: 2.5, fill: s.colour }, root);
    }
    return figure;
  }

  function legend(entries) {
    const box = document.createElement("p");
    box.className = "legend";
    for (const [name, colour, note] of entries) {
      const item = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour;
      item.append(swatch, note ? `${name} (${note})` : name);
      box.appendChild(item);
    }
    return box;
  }

  /** Record one image's attention answer (a result of POST /v1/models/{name}/attention, JSON). */
  function record(model, result) {
    const top = result.predictions ? result.predictions[0] : (result.detections || [])[0];
    const label = top ? (top.label ?? top.category) : "(no detection)";
    const list = images.get(model) || [];
    list.push({ label, layers: result.layers.map((l) => ({ name: l.name, weights: l.weights })) });
    if (list.length > MAX_IMAGES) list.splice(0, list.length - MAX_IMAGES);
    images.set(model, list);
    show(model);
    pollDrift(model);
    if (timer === null) timer = setInterval(() => { if (shown && !document.hidden) pollDrift(shown); }, POLL_MS);
  }

  /** Per class, per layer: the mean weight vector over this tab's images of that predicted class. */
  function classMeans(list) {
    const sums = new Map();  // label -> {n, layers: [Float64Array]}
    for (const image of list) {
      const acc = sums.get(image.label) || { n: 0, layers: image.layers.map((l) => new Float64Array(l.weights.length)) };
      image.layers.forEach((l, i) => l.weights.forEach((w, c) => { acc.layers[i][c] += w; }));
      acc.n += 1;
      sums.set(image.label, acc);
    }
    return [...sums.entries()].sort(([a], [b]) => a.localeCompare(b))
      .map(([label, acc]) => ({ label, n: acc.n, layers: acc.layers.map((v) => Array.from(v, (s) => s / acc.n)) }));
  }

  function drawAttention(model) {
    const list = images.get(model) || [];
    const box = $("session-attention");
    box.innerHTML = "";
    $("session").hidden = list.length === 0;
    if (!list.length) return;
    const classes = classMeans(list);
    $("session-count").textContent = `${list.length} image(s) of ${model} in this tab (last ${MAX_IMAGES} kept), ${classes.length} predicted class(es)`;
    box.appendChild(legend(classes.map((c, i) => [c.label, COLOURS[i % COLOURS.length], `${c.n}`])));
    const grid = document.createElement("div");
    grid.className = "charts";
    list[0].layers.forEach((layer, li) => {
      const series = classes.map((c, i) => ({
        name: c.label, colour: COLOURS[i % COLOURS.length], points: c.layers[li].map((w, ch) => [ch, w]),
      }));
      grid.appendChild(lineChart(layer.name, series, [0, Math.max(1, layer.weights.length - 1)], 1, "channel"));
    });
    box.appendChild(grid);
    box.dataset.layers = String(list[0].layers.length);
    box.dataset.classes = String(classes.length);
  }

  async function pollDrift(model) {
    let body;
    try {
      const response = await fetch(`v1/models/${encodeURIComponent(model)}/drift`);
      body = await response.json();
      if (!response.ok) {
        if (model === shown) drawDriftMessage(body.error || `${response.status}`);
        return;
      }
    } catch (err) {
      return;  // a missed poll is drawn as no point; the next one catches up
    }
    const points = drift.get(model) || [];
    points.push({ t: (Date.now() - started) / 1000, inWindow: body.images_in_window, minImages: body.min_images, seen: body.images_seen,
                  layers: Object.fromEntries(body.layers.map((l) => [l.name, l.score])) });
    if (points.length > MAX_POLLS) points.splice(0, points.length - MAX_POLLS);
    drift.set(model, points);
    if (model === shown) drawDrift(model);
  }

  function drawDriftMessage(text) {
    $("drift").hidden = false;
    $("drift-note").textContent = text;
    $("drift-charts").innerHTML = "";
    $("drift-charts").dataset.layers = "0";
  }

  function drawDrift(model) {
    const points = drift.get(model) || [];
    $("drift").hidden = points.length === 0;
    if (!points.length) return;
    const last = points[points.length - 1];
    const names = Object.keys(last.layers);
    const scored = names.filter((n) => last.layers[n] !== null);
    $("drift-note").textContent = scored.length
      ? `PSI against the held-out reference, ${last.inWindow} image(s) in the window: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted.`
      : `Not enough images yet: ${last.inWindow} of the ${last.minImages} sampled images the window needs before a score ` +
        `(${last.seen} seen by the server; the sample keeps the summary within its time budget).`;
    const box = $("drift-charts");
    box.innerHTML = "";
    box.dataset.layers = String(names.length);
    box.dataset.polls = String(points.length);
    if (!scored.length) return;
    const series = names.map((n, i) => ({
      name: n, colour: COLOURS[i % COLOURS.length],
      points: points.filter((p) => p.layers[n] !== null && p.layers[n] !== undefined).map((p) => [p.t, p.layers[n]]),
    }));
    const yMax = Math.max(0.25, ...series.flatMap((s) => s.points.map((p) => p[1])));
    box.appendChild(lineChart("drift score per layer", series, [points[0].t, last.t], yMax, "seconds since the page opened", [0.1, 0.25], 620));
    box.appendChild(legend(names.map((n, i) => [n, COLOURS[i % COLOURS.length], last.layers[n] === null ? "n/a" : last.layers[n].toFixed(3)])));
  }

  /** Show the panels of `model` (the model select changed, or an image was recorded). */
  function show(model) {
    shown = model;
    drawAttention(model);
    drawDrift(model);
  }

  return { record, show };
})();
