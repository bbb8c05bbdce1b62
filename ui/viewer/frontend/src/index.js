// medcbir compare viewer: a Streamlit component on Cornerstone3D (query | neighbour, linked window/level).
import {
  init as csInit,
  RenderingEngine,
  Enums,
  imageLoader,
  utilities,
  setUseCPURendering,
  cache,
  metaData,
} from "@cornerstonejs/core";
import {
  init as toolsInit,
  addTool,
  ToolGroupManager,
  WindowLevelTool,
  PanTool,
  ZoomTool,
  Enums as ToolEnums,
} from "@cornerstonejs/tools";

// ---- the Streamlit component protocol (postMessage; what streamlit-component-lib does, without React)
function send(type, data) {
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
}
let counter = 0;
const recent = [];
// The value carries the last events, not just one: a frame report landing while Python still runs the
// previous one would otherwise replace a "next" before Python saw it. Python acts on the seqs it has not seen.
function report(event) {
  counter += 1;
  // Grows across reloads of the frame too (time-based).
  const seq = Date.now() * 1000 + (counter % 1000);
  recent.push({ seq, ...event });
  if (recent.length > 20) recent.shift();
  send("streamlit:setComponentValue", { value: { seq, ...event, events: recent.slice() }, dataType: "json" });
}

// ---- page skeleton (all text from the archive goes through textContent: DICOM text is hostile input)
const root = document.getElementById("root");
root.innerHTML = `
<div class="bar">
  <span id="title"></span>
  <button id="prev" title="Previous neighbour (ArrowLeft or k)">&#9664; Prev</button>
  <button id="next" title="Next neighbour (ArrowRight or j)">Next &#9654;</button>
  <button id="overlay" title="Similarity overlay (o)">Similarity overlay</button>
  <button id="reset" title="Reset zoom, pan and window (r)">Reset</button>
  <span id="window" class="readout"></span>
</div>
<div class="panes">
  <div class="pane"><div class="label" id="qlabel">Query</div><div class="vpwrap"><div class="vp" id="vp-query"></div><canvas class="heat" id="heat-query"></canvas></div>
    <div class="frames"><input type="range" id="frames-query" min="0" value="0" aria-label="Query frame"><span id="fq"></span></div></div>
  <div class="pane"><div class="label" id="nlabel">Neighbour</div><div class="vpwrap"><div class="vp" id="vp-neighbour"></div><canvas class="heat" id="heat-neighbour"></canvas></div>
    <div class="frames"><input type="range" id="frames-neighbour" min="0" value="0" aria-label="Neighbour frame"><span id="fn"></span></div></div>
  <div class="side">
    <div class="legend" id="legend"><div>Similarity map: share of the similarity</div><div class="ramp"></div>
      <div class="ticks"><span>low</span><span>high</span></div></div>
    <div class="meta" id="meta"></div>
    <div class="report-title">Report</div><div class="report" id="report"></div>
    <div class="keys">Keys: drag = window/level (both sides; off on colour images) · right drag = pan ·
      middle drag or wheel = zoom · ArrowUp/ArrowDown = frame · ArrowRight/j, ArrowLeft/k = next/previous
      neighbour · o = overlay · r = reset · Esc = close</div>
  </div>
</div>`;

const $ = (id) => document.getElementById(id);
const SIDES = ["query", "neighbour"];
const state = {
  engine: null,
  group: null,
  loaded: { query: null, neighbour: null }, // signature of the image shown on each side
  images: { query: null, neighbour: null }, // {ids, data}
  colour: { query: false, neighbour: false }, // RGB images: shown as they are, no window/level
  heat: { query: null, neighbour: null }, // offscreen canvases of the coloured maps
  overlay: false,
  linked: true,
  syncing: false,
  lastWindowArg: null,
  win: { query: null, neighbour: null },
  want: { query: null, neighbour: null },
  height: 0,
};

function webglAvailable() {
  try {
    const canvas = document.createElement("canvas");
    return !!(canvas.getContext("webgl2") || canvas.getContext("webgl"));
  } catch (e) {
    return false;
  }
}

async function setup(forceCpu) {
  await csInit();
  state.cpu = forceCpu || !webglAvailable();
  // Cornerstone's CPU path draws on a 2-D canvas: the default, since our images are at most 512 px a side
  // (a few ms a frame) and it works everywhere; WebGL (asked with cpu=False) is used only where it exists.
  // In software WebGL (SwiftShader, headless Chromium) the GPU path drew float images with a broken VOI.
  if (forceCpu || !webglAvailable()) setUseCPURendering(true);
  metaData.addProvider(provideMetadata, 10000);
  toolsInit();
  [WindowLevelTool, PanTool, ZoomTool].forEach((tool) => addTool(tool));
  state.engine = new RenderingEngine("medcbir-compare");
  state.engine.setViewports(
    SIDES.map((side) => ({
      viewportId: side,
      type: Enums.ViewportType.STACK,
      element: $(`vp-${side}`),
      defaultOptions: { background: [0, 0, 0] },
    })),
  );
  const group = ToolGroupManager.createToolGroup("medcbir-compare-tools");
  [WindowLevelTool, PanTool, ZoomTool].forEach((tool) => group.addTool(tool.toolName));
  group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: ToolEnums.MouseBindings.Primary }] });
  group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: ToolEnums.MouseBindings.Secondary }] });
  group.setToolActive(ZoomTool.toolName, {
    bindings: [{ mouseButton: ToolEnums.MouseBindings.Auxiliary }, { mouseButton: ToolEnums.MouseBindings.Wheel }],
  });
  SIDES.forEach((side) => group.addViewport(side, "medcbir-compare"));
  state.group = group;
  SIDES.forEach((side) => {
    const element = $(`vp-${side}`);
    element.addEventListener("contextmenu", (e) => e.preventDefault());
    element.addEventListener(Enums.Events.VOI_MODIFIED, (evt) => onVoi(side, evt.detail));
    element.addEventListener(Enums.Events.IMAGE_RENDERED, () => {
      if (state.want[side]) applyWanted(side);
      drawHeat(side);
    });
    element.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => onFrame(side));
    element.addEventListener("mouseup", () => reportWindowSoon());
  });
}

function decode(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

// The DICOM modules Cornerstone asks for, for our local images (plane and pixel modules come with them).
const modules = new Map();
function provideMetadata(type, imageId) {
  const known = modules.get(imageId);
  if (!known) return undefined;
  if (type === "generalSeriesModule") return { modality: known.modality };
  if (type === "modalityLutModule") return { rescaleSlope: 1, rescaleIntercept: 0 };
  if (type === "voiLutModule") return { windowCenter: [known.center], windowWidth: [known.width] };
  if (type === "generalImageModule") return { instanceNumber: known.frame + 1 };
  return undefined;
}

// A colour image's window: the identity (DICOM linear VOI with C 128 / W 256 maps each level to itself).
const COLOUR_WINDOW = [128, 256];

function loadImage(side, image, sig) {
  const values = decode(image.data);
  const colour = image.channels === 3;
  // RGB frames go to Cornerstone as interleaved 8-bit RGB (its colour path indexes a LUT by the value).
  const plane = image.rows * image.columns * (colour ? 3 : 1);
  const spacing = image.pixel_spacing || [1, 1];
  const ids = [];
  for (let f = 0; f < image.frames; f += 1) {
    const id = `medcbir:${side}:${sig}:${f}`;
    modules.set(id, {
      modality: image.units === "modality" ? image.modality || "OT" : "OT",
      center: colour ? COLOUR_WINDOW[0] : image.window_center,
      width: colour ? COLOUR_WINDOW[1] : image.window_width,
      frame: f,
    });
    if (!cache.getImageLoadObject(id)) {
      imageLoader.createAndCacheLocalImage(id, {
        scalarData: colour
          ? Uint8Array.from(values.subarray(f * plane, (f + 1) * plane), (v) => Math.round(v))
          : values.slice(f * plane, (f + 1) * plane),
        dimensions: [image.columns, image.rows],
        spacing: [spacing[1], spacing[0]],
        origin: [0, 0, 0],
        direction: [1, 0, 0, 0, 1, 0],
        frameOfReferenceUID: `medcbir-${side}-${sig}`,
      });
    }
    ids.push(id);
  }
  return ids;
}

// What each side shows now: kept here (from VOI_MODIFIED and our own settings), because a viewport
// forgets its VOI while a new stack loads.
function windowOf(side) {
  return state.win[side];
}

function windowOfRange(range) {
  const width = range.upper - range.lower;
  return [range.lower + width / 2, width];
}

// Set a side's window now, and again once its image is drawn if the stack was still loading.
function setWindow(side, win, invert) {
  if (state.colour[side]) {
    state.want[side] = { win: COLOUR_WINDOW, invert: false };
  } else state.want[side] = { win, invert };
  applyWanted(side);
}

function applyWanted(side) {
  const want = state.want[side];
  const viewport = state.engine.getViewport(side);
  if (!want || !viewport.getCurrentImageId()) return;
  state.syncing = true;
  const props = { voiRange: rangeOf(want.win) };
  if (want.invert !== undefined) props.invert = want.invert;
  viewport.setProperties(props);
  state.syncing = false;
  const range = viewport.getProperties().voiRange;
  if (range) {
    state.win[side] = windowOfRange(range);
    state.want[side] = null;
    viewport.render();
    showWindow();
  }
}

function rangeOf([center, width]) {
  return { lower: center - width / 2, upper: center + width / 2 };
}

const cap = (side) => (side === "query" ? "Query" : "Neighbour");

// The side whose window the readout shows and Python takes: the query, unless it is colour.
function windowSide() {
  return SIDES.find((side) => state.images[side] && !state.colour[side]) || null;
}

function showWindow() {
  // Read by the browser test (and handy when debugging): what each viewport shows now.
  SIDES.forEach((side) => {
    const win = state.images[side] ? windowOf(side) : null;
    document.body.dataset[`window${cap(side)}`] = win ? win.map((v) => v.toFixed(2)).join(",") : "";
    document.body.dataset[`frame${cap(side)}`] = String(currentFrame(side));
    document.body.dataset[`colour${cap(side)}`] = state.colour[side] ? "1" : "0";
  });
  const side = windowSide();
  const w = side ? windowOf(side) : null;
  const units = side ? state.images[side].units : "";
  const both = state.images.query && state.images.neighbour && !state.colour.query && !state.colour.neighbour;
  // The query's window, or the neighbour's (named) when the query is colour.
  const whose = side === "neighbour" && state.images.query ? "Neighbour " : "";
  let text = w ? `${whose}L ${w[0].toFixed(0)} / W ${w[1].toFixed(0)}${units === "modality" ? "" : " (grey levels)"}` : "";
  if (w && both) text += state.linked ? " · linked" : " · not linked (other units)";
  if (state.colour.query || state.colour.neighbour) {
    text += `${text ? " · " : ""}colour image${state.colour.query && state.colour.neighbour ? "s" : ""}: window/level off`;
  }
  $("window").textContent = text;
}

function onVoi(side, detail) {
  if (!detail || !detail.range) return;
  state.win[side] = windowOfRange(detail.range);
  if (state.syncing) return;
  if (state.colour[side]) {
    // A colour image keeps its own colours: a drag on it does not window it (nor the other side).
    const viewport = state.engine.getViewport(side);
    state.syncing = true;
    viewport.setProperties({ voiRange: rangeOf(COLOUR_WINDOW) });
    state.syncing = false;
    state.win[side] = COLOUR_WINDOW.slice();
    viewport.render();
    return;
  }
  const other = side === "query" ? "neighbour" : "query";
  if (state.linked && state.images[other] && !state.colour[other]) {
    state.syncing = true;
    const viewport = state.engine.getViewport(other);
    viewport.setProperties({ voiRange: { ...detail.range } });
    viewport.render();
    state.win[other] = windowOfRange(detail.range);
    state.syncing = false;
  }
  showWindow();
}

let windowTimer = null;
let lastReported = null;
function reportWindowSoon() {
  clearTimeout(windowTimer);
  windowTimer = setTimeout(() => {
    const side = windowSide();
    const w = side ? windowOf(side) : null;
    if (!w) return;
    const key = w.map((v) => v.toFixed(3)).join(",");
    if (key === lastReported) return;
    lastReported = key;
    report({ action: "window", window: [Number(w[0].toFixed(3)), Number(w[1].toFixed(3))] });
  }, 250);
}

let frameTimer = null;
function onFrame(side) {
  const viewport = state.engine.getViewport(side);
  const image = state.images[side];
  if (!image) return;
  const index = viewport.getCurrentImageIdIndex();
  $(`frames-${side}`).value = String(index);
  showWindow();
  $(side === "query" ? "fq" : "fn").textContent = image.frames > 1 ? `frame ${image.frame_indices[index] + 1} of ${image.source_frames}` : "";
  clearTimeout(frameTimer);
  frameTimer = setTimeout(() => {
    report({ action: "frame", side, frame: image.frame_indices[index], frames: {
      query: currentFrame("query"), neighbour: currentFrame("neighbour") } });
  }, 300);
}

function currentFrame(side) {
  const image = state.images[side];
  if (!image) return null;
  return image.frame_indices[state.engine.getViewport(side).getCurrentImageIdIndex()];
}

// A perceptual ramp (dark purple -> orange -> yellow, "inferno"-like), transparent where the map is low,
// so the anatomy stays readable under the cold regions (the old jet overlay hid it).
const RAMP = [
  [0.0, [0, 0, 4]], [0.25, [87, 16, 110]], [0.5, [188, 55, 84]], [0.75, [249, 142, 9]], [1.0, [252, 255, 164]],
];
function colour(t) {
  for (let i = 1; i < RAMP.length; i += 1) {
    if (t <= RAMP[i][0]) {
      const [t0, c0] = RAMP[i - 1];
      const [t1, c1] = RAMP[i];
      const u = (t - t0) / (t1 - t0);
      return c0.map((c, k) => Math.round(c + (c1[k] - c) * u));
    }
  }
  return RAMP[RAMP.length - 1][1];
}

function heatCanvas(map) {
  const canvas = document.createElement("canvas");
  canvas.width = map.columns;
  canvas.height = map.rows;
  const values = decode(map.data);
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(map.columns, map.rows);
  for (let i = 0; i < values.length; i += 1) {
    const t = Math.min(Math.max(values[i], 0), 1);
    const [r, g, b] = colour(t);
    pixels.data.set([r, g, b, t < 0.15 ? 0 : Math.round(170 * t)], i * 4);
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function drawHeat(side) {
  const canvas = $(`heat-${side}`);
  const element = $(`vp-${side}`);
  canvas.width = element.clientWidth;
  canvas.height = element.clientHeight;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const heat = state.heat[side];
  const image = state.images[side];
  delete document.body.dataset[`heat${cap(side)}`];
  if (!state.overlay || !heat || !image) return;
  const viewport = state.engine.getViewport(side);
  const imageId = viewport.getCurrentImageId();
  if (!imageId) return;
  // The map follows zoom and pan: the image's corners in canvas pixels, from Cornerstone's own camera.
  const topLeft = viewport.worldToCanvas(utilities.imageToWorldCoords(imageId, [0, 0]));
  const bottomRight = viewport.worldToCanvas(utilities.imageToWorldCoords(imageId, [image.columns, image.rows]));
  const rect = [topLeft[0], topLeft[1], bottomRight[0] - topLeft[0], bottomRight[1] - topLeft[1]];
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(heat, ...rect);
  // Where the map was drawn, in canvas pixels, and Cornerstone's zoom: the browser test checks that the
  // map follows the image under zoom and pan.
  document.body.dataset[`heat${cap(side)}`] = rect.map((v) => v.toFixed(1)).join(",");
  document.body.dataset[`zoom${cap(side)}`] = viewport.getZoom().toFixed(4);
}

function setOverlay(on) {
  state.overlay = on && !!(state.heat.query || state.heat.neighbour);
  state.overlayAsked = on;
  $("legend").style.display = state.overlay ? "block" : "none";
  $("overlay").classList.toggle("on", state.overlay);
  document.body.dataset.overlay = state.overlay ? "on" : "off";
  SIDES.forEach(drawHeat);
}

function scrollFrame(delta) {
  SIDES.forEach((side) => {
    const image = state.images[side];
    if (!image || image.frames < 2) return;
    const viewport = state.engine.getViewport(side);
    const next = Math.min(Math.max(viewport.getCurrentImageIdIndex() + delta, 0), image.frames - 1);
    viewport.setImageIdIndex(next);
  });
}

function resetView() {
  SIDES.forEach((side) => {
    const image = state.images[side];
    if (!image) return;
    const viewport = state.engine.getViewport(side);
    viewport.resetCamera();
    setWindow(side, [image.window_center, image.window_width]);
  });
  showWindow();
  reportWindowSoon();
}

async function showSide(side, image, sig, windowArg) {
  const viewport = state.engine.getViewport(side);
  if (state.loaded[side] !== sig) {
    const ids = loadImage(side, image, sig);
    state.images[side] = image;
    state.colour[side] = image.channels === 3;
    await viewport.setStack(ids, image.start_frame || 0);
    state.loaded[side] = sig;
    const slider = $(`frames-${side}`);
    slider.max = String(Math.max(image.frames - 1, 0));
    slider.value = String(image.start_frame || 0);
    slider.parentElement.style.visibility = image.frames > 1 ? "visible" : "hidden";
    setWindow(side, windowArg || [image.window_center, image.window_width], !!image.invert);
    onFrame(side);
    return true;
  }
  return false;
}

function applyArgs(args) {
  document.body.className = args.theme === "dark" ? "dark" : "light";
  $("title").textContent = args.title || "";
  const colourNote = (image) => (image && image.channels === 3 ? " · colour (window/level off)" : "");
  $("qlabel").textContent = (args.query_label || "Query") + colourNote(args.query);
  $("nlabel").textContent = (args.neighbour_label || "Neighbour") + colourNote(args.neighbour);
  $("meta").textContent = args.neighbour_meta || "";
  $("report").textContent = args.report || "No report.";
  $("prev").disabled = !args.has_prev;
  $("next").disabled = !args.has_next;
  state.linked = args.query.units === args.neighbour.units;
  state.heat.query = args.maps ? heatCanvas(args.maps.query) : null;
  state.heat.neighbour = args.maps ? heatCanvas(args.maps.neighbour) : null;
  // The maps are fetched when the overlay is asked for: the button asks Python, which fetches them.
  $("overlay").disabled = !!args.maps_error;
  $("overlay").title = args.maps_error || "Similarity overlay (o)";
}

let lastArgs = null;
window.__medcbirViewer = state; // for debugging in the browser console
async function render(args) {
  const first = !state.engine;
  if (first) await setup(args.cpu !== false);
  applyArgs(args);
  const windowArg = args.window ? [args.window[0], args.window[1]] : null;
  const windowChanged = JSON.stringify(windowArg) !== JSON.stringify(state.lastWindowArg);
  const fresh = [
    await showSide("query", args.query, args.query_sig, windowArg),
    await showSide("neighbour", args.neighbour, args.neighbour_sig, state.linked ? windowArg : null),
  ];
  if (windowChanged && windowArg) {
    // A preset or a slider of the page: both sides follow (the neighbour only in the same units).
    SIDES.forEach((side) => {
      if ((side === "neighbour" && !state.linked) || state.colour[side]) return;
      setWindow(side, windowArg, state.want[side] ? state.want[side].invert : undefined);
    });
    lastReported = windowArg.map((v) => v.toFixed(3)).join(",");
  }
  state.lastWindowArg = windowArg;
  setOverlay(!!args.overlay);
  showWindow();
  lastArgs = args;
  resize();
  // The frame's height is known only now: fit each new image to its viewport's final size.
  if (fresh[0] || fresh[1]) {
    state.engine.resize(true, false);
    SIDES.forEach((side, i) => {
      if (fresh[i]) state.engine.getViewport(side).resetCamera();
    });
    state.engine.render();
  }
  document.body.dataset.neighbour = String(args.neighbour_sig);
  document.body.dataset.ready = "1";
  resize();
  // Opened: take the keyboard, as a reading screen does (the page's own text fields keep theirs).
  if (first && !editing(parentDocument() && parentDocument().activeElement)) takeFocus();
}

function resize() {
  const height = document.documentElement.scrollHeight;
  if (height !== state.height) {
    state.height = height;
    send("streamlit:setFrameHeight", { height });
  }
}

$("prev").addEventListener("click", () => report({ action: "prev" }));
$("next").addEventListener("click", () => report({ action: "next" }));
$("overlay").addEventListener("click", () => report({ action: "overlay", overlay: !state.overlayAsked }));
$("reset").addEventListener("click", resetView);
SIDES.forEach((side) => {
  $(`frames-${side}`).addEventListener("input", (e) => {
    state.engine.getViewport(side).setImageIdIndex(Number(e.target.value));
  });
});
// ---- keys. Streamlit draws the viewer in an iframe: keys reach it while it has the focus, which it takes
// when opened and on any click in it (Cornerstone's tools cancel the mousedown, so the browser would not
// move the focus by itself), and keeps after the pointer leaves. Keys pressed on the page around it
// (after a click on a toggle of the panel, say) are handled too, except in text fields and sliders.
function onKey(e) {
  if (!lastArgs || e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (key === "ArrowRight" || key === "j") {
    if (lastArgs.has_next) report({ action: "next" });
  } else if (key === "ArrowLeft" || key === "k") {
    if (lastArgs.has_prev) report({ action: "prev" });
  } else if (key === "ArrowUp" || key === "PageUp") scrollFrame(-1);
  else if (key === "ArrowDown" || key === "PageDown") scrollFrame(1);
  else if (key === "o") {
    if (!lastArgs.maps_error) report({ action: "overlay", overlay: !state.overlayAsked });
  } else if (key === "r") resetView();
  else if (key === "Escape") report({ action: "close" });
  else return;
  e.preventDefault();
  e.stopPropagation();
}

function editing(element) {
  if (!element || !element.tagName) return false;
  const tag = element.tagName.toLowerCase();
  if (tag === "textarea" || tag === "select" || element.isContentEditable) return true;
  // Widgets whose arrow keys mean something of their own (sliders, radio groups, lists, menus, tabs).
  const roles = ["slider", "textbox", "combobox", "spinbutton", "radio", "radiogroup", "listbox", "option", "menu", "menuitem", "tab"];
  if (element.getAttribute && roles.includes(element.getAttribute("role"))) return true;
  return tag === "input" && !["checkbox", "button", "submit", "reset"].includes((element.type || "").toLowerCase());
}

function parentDocument() {
  try {
    return window.parent !== window ? window.parent.document : null;
  } catch (e) {
    return null; // served from another origin: keys work while the viewer has the focus
  }
}

function takeFocus() {
  if (document.activeElement === document.body && document.hasFocus()) return;
  window.focus();
  document.body.focus({ preventScroll: true });
  document.body.dataset.focused = document.hasFocus() ? "1" : "0";
}

document.body.tabIndex = -1; // focusable, so that the iframe's document holds the keyboard
document.addEventListener("keydown", onKey);
document.addEventListener("pointerdown", () => takeFocus(), true);
window.addEventListener("focus", () => { document.body.dataset.focused = "1"; });
window.addEventListener("blur", () => { document.body.dataset.focused = "0"; });

const host = parentDocument();
function onPageKey(e) {
  // This frame gone (the viewer closed or re-mounted): stop listening on the page.
  if (!window.frameElement || !window.frameElement.isConnected) {
    hostWindow.removeEventListener("keydown", onPageKey, true);
    return;
  }
  if (editing(e.target)) return;
  onKey(e);
}
// In the capture phase of the page's window: before Streamlit's own shortcuts ("r" would rerun the app).
const hostWindow = host ? host.defaultView : null;
if (hostWindow) {
  hostWindow.addEventListener("keydown", onPageKey, true);
  window.addEventListener("pagehide", () => hostWindow.removeEventListener("keydown", onPageKey, true));
}
window.addEventListener("resize", () => {
  if (state.engine) state.engine.resize(true, true);
  SIDES.forEach(drawHeat);
});

let pending = Promise.resolve();
window.addEventListener("message", (event) => {
  if (!event.data || event.data.type !== "streamlit:render") return;
  const args = event.data.args || {};
  pending = pending.then(() => render(args)).catch((err) => {
    $("title").textContent = `Viewer error: ${err && err.message ? err.message : err}`;
    document.body.dataset.error = String(err);
    resize();
  });
});
send("streamlit:componentReady", { apiVersion: 1 });
