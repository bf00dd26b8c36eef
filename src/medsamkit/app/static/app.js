// medsamkit annotation page: the NiiVue viewer (served from npm's node_modules at /vendor/niivue/) over the
// server's JSON API (/api/sessions/{sid}/...). Plain ES module, no build step.
//
// Orientation. The server's volume.nii.gz and mask.nii.gz hold the (Z, Y, X) arrays as NIfTI voxels
// (i, j, k) = (x, y, z) with the source's affine. NiiVue shows them resliced to RAS and reports positions as
// fractions of its RAS-reoriented grid: RAS axis a is native voxel axis |permRAS[a]| - 1, counted backwards when
// permRAS[a] < 0. A click is mapped back to the native voxel (i, j, k); the tile's fixed native axis gives the
// API axis (k -> "z", j -> "y", i -> "x") and the slice index, and the pixel in that slice's frame is
// z: (x, y) = (i, j); y: (x, y) = (i, k); x: (x, y) = (j, k). On screen the rows of an axial slice usually run
// bottom-up (anterior at the top), the opposite of the slice PNG; boxes are therefore built from min/max.

const $ = (sel) => document.querySelector(sel);
const API_AXIS = ["x", "y", "z"]; // native voxel axis i, j, k -> API axis name
const NATIVE_OF_AXIS = { x: 0, y: 1, z: 2 };
const TOOL_KEYS = { v: "navigate", b: "box", p: "positive", n: "negative", r: "brush", e: "eraser" };
const PALETTE = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200],
  [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128],
];

const state = {
  sid: null,
  info: null, // the server's volume info
  tool: "box",
  label: 1,
  labels: new Map(), // value -> {name, voxels}
  brush: 2,
  prompt: null, // {axis, slice, label, box, points}: the prompts of the object being segmented
  lastSlice: new Map(), // label -> {axis, slice} last segmented or edited
  drag: null, // an ongoing box drag or brush stroke
  pending: 0, // API requests in flight
  propagating: false,
  lastSave: null,
  hover: null,
  progress: null, // the last propagation progress seen {done, total}
  encoding: null, // the server's background pre-encoding status (GET .../encoding)
  ready: false, // the viewer module loaded
  history: { undo: 0, redo: 0, unsaved: false }, // the server's undo/redo steps, and labels changed since saving
  mouseUpAt: 0, // performance.now() of the last mouse-up on the viewer, and of the frame after the last redraw
  drawnAt: 0,
};

let NV = null; // the NiiVue module
let nv = null; // the Niivue instance
let glCanvas, uiCanvas;
let queue = Promise.resolve(); // mutating requests run one after another, in order

// -- status and API ------------------------------------------------------------------------------------------
function setStatus(text, kind = "") {
  const el = $("#status");
  el.textContent = text;
  el.className = kind;
}

function updateBusy() {
  $("#busy").textContent = state.pending > 0 ? "working…" : "";
  document.body.dataset.pending = String(state.pending);
}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, { raw = false, contentType = null } = {}) {
  state.pending++;
  updateBusy();
  try {
    const opts = { method, headers: {} };
    if (body instanceof FormData) {
      opts.body = body;
    } else if (body instanceof Uint8Array || body instanceof Blob) {
      opts.body = body;
      opts.headers["content-type"] = contentType || "application/octet-stream";
    } else if (body !== undefined) {
      opts.body = JSON.stringify(body);
      opts.headers["content-type"] = "application/json";
    }
    let r;
    try {
      r = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(`cannot reach the server (${e.message})`, 0);
    }
    if (!r.ok) {
      let msg = `${r.status} ${r.statusText}`;
      try {
        const j = await r.json();
        if (j && j.error) msg = j.error;
      } catch {
        /* not JSON */
      }
      throw new ApiError(msg, r.status);
    }
    return raw ? r : r.json();
  } finally {
    state.pending--;
    updateBusy();
  }
}

const base = () => `/api/sessions/${state.sid}`;

// -- background pre-encoding ---------------------------------------------------------------------------------
// The server encodes the open volume's slices in the background, nearest to the viewed slice first. The page shows
// how many are ready and tells the server where the annotator is (the crosshair's z slice) while it works. These
// polls are not user operations: they bypass api()'s busy count and never show an error.
let encodingTimer = null;

async function quiet(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["content-type"] = "application/json";
  }
  const r = await fetch(path, opts);
  if (!r.ok) throw new Error(`${r.status}`);
  return r.json();
}

function renderEncoding() {
  const st = state.encoding;
  const row = $("#encoding-row");
  if (!st || !st.enabled || !st.total) {
    row.hidden = true;
    return;
  }
  row.hidden = false;
  const bar = $("#encoding");
  bar.max = st.total;
  bar.value = st.done;
  const along = state.info && !state.info.is_2d ? ` along ${st.axis}` : "";
  let text = `${st.done}/${st.total} slices${along}`;
  if (st.error) text += ` (stopped: ${st.error})`;
  else if (st.paused) text += " (paused)";
  else if (!st.running) text += ": ready";
  $("#encoding-text").textContent = text;
  row.dataset.done = String(st.done);
  row.dataset.total = String(st.total);
  row.dataset.running = String(Boolean(st.running));
}

function watchEncoding(status) {
  clearTimeout(encodingTimer);
  state.encoding = status || null;
  renderEncoding();
  const sid = state.sid;
  const tick = async () => {
    if (state.sid !== sid || !state.info) return;
    const st = state.encoding;
    try {
      const z = nv && !state.info.is_2d ? crosshairNative()[2] : 0;
      if (st && st.axis === "z" && z !== st.focus && st.total < st.slices) {
        state.encoding = await quiet("POST", `${base()}/encoding`, { axis: "z", slice: z });
      } else {
        state.encoding = await quiet("GET", `${base()}/encoding`);
      }
      renderEncoding();
    } catch {
      /* a request that needs the model encodes on demand and reports its own errors */
    }
    const now = state.encoding;
    if (!now || !now.enabled || now.error) return;
    if (now.running || now.paused) encodingTimer = setTimeout(tick, 400);
    else if (now.total < now.slices) encodingTimer = setTimeout(tick, 1500); // more slices than it keeps: follow the view
  };
  encodingTimer = setTimeout(tick, 400);
}

// Run fn after every earlier queued operation; errors go to the status line.
function enqueue(fn) {
  const run = queue.then(fn).catch(showError);
  queue = run;
  return run;
}

function showError(e) {
  console.error(e);
  setStatus(`Error: ${e && e.message ? e.message : e}`, "error");
}

const guard = (fn) => (...args) => Promise.resolve().then(() => fn(...args)).catch(showError);

// -- label colours -------------------------------------------------------------------------------------------
const colorOf = (v) => state.labels.get(v)?.color || PALETTE[(v - 1) % PALETTE.length];

// NiiVue's drawing colour table: value v in its segment's colour, 0 and hidden segments transparent. Set directly
// (refreshColormaps uploads it) rather than through setDrawColormap, which would re-render every volume layer.
function applyColors() {
  if (!nv || !back()) return;
  const lut = new Uint8ClampedArray(256 * 4);
  const names = [];
  for (let v = 0; v < 256; v++) {
    const seg = state.labels.get(v);
    names.push(seg?.name || String(v));
    if (v === 0) continue;
    const [r, g, b] = colorOf(v);
    lut.set([r, g, b, seg && seg.visible === false ? 0 : 255], 4 * v);
  }
  nv.drawLut = { lut, labels: names };
  nv.refreshColormaps();
  redraw();
}

// -- geometry: NiiVue's RAS grid <-> native voxels <-> API slices ------------------------------------------------
const back = () => (nv && nv.volumes.length ? nv.volumes[0] : null);
const nativeDims = () => back().hdr.dims.slice(1, 4).map(Number); // [nx, ny, nz]

// for each RAS axis a: the native axis n it runs along, and whether it runs backwards (index last - i)
function rasAxes() {
  const vol = back();
  const dims = nativeDims();
  return [0, 1, 2].map((a) => {
    const n = Math.abs(vol.permRAS[a]) - 1;
    return { a, n, flip: vol.permRAS[a] < 0, last: dims[n] - 1 };
  });
}

function rasToNative(ras) {
  const out = [0, 0, 0];
  for (const { a, n, flip, last } of rasAxes()) out[n] = flip ? last - ras[a] : ras[a];
  return out;
}

function nativeToRas(nat) {
  const out = [0, 0, 0];
  for (const { a, n, flip, last } of rasAxes()) out[a] = flip ? last - nat[n] : nat[n];
  return out;
}

// continuous native voxel coordinates of a position given as fractions of the RAS grid
function fracToNative(frac) {
  const d = back().dimsRAS;
  return rasToNative([frac[0] * d[1] - 0.5, frac[1] * d[2] - 0.5, frac[2] * d[3] - 0.5]);
}

function nativeToFrac(nat) {
  const d = back().dimsRAS;
  const ras = nativeToRas(nat);
  return [(ras[0] + 0.5) / d[1], (ras[1] + 0.5) / d[2], (ras[2] + 0.5) / d[3]];
}

// The API axis a tile shows: NiiVue's axial/coronal/sagittal (axCorSag 0/1/2) fix RAS axis 2/1/0.
function axisOfTile(axCorSag) {
  const fixedRas = [2, 1, 0][axCorSag];
  return API_AXIS[Math.abs(back().permRAS[fixedRas]) - 1];
}

// (rows, columns) of a slice along axis
function sliceShape(axis) {
  const [nx, ny, nz] = nativeDims();
  return { z: [ny, nx], y: [nz, nx], x: [nz, ny] }[axis];
}

// native voxel (continuous) -> [column, row] in the frame of a slice along axis, and the slice index
function sliceCoords(axis, nat) {
  const [i, j, k] = nat;
  return { z: [i, j, k], y: [i, k, j], x: [j, k, i] }[axis];
}

function crosshairNative() {
  return fracToNative(nv.scene.crosshairPos).map(Math.round);
}

// the 2D tile under a canvas position (device pixels), or -1
function tileAt(x, y) {
  const slices = nv.screenSlices || [];
  for (let t = 0; t < slices.length; t++) {
    const s = slices[t];
    if (s.axCorSag > 2) continue;
    let [l, top, w, h] = s.leftTopWidthHeight;
    if (w < 0) {
      l += w;
      w = -w;
    }
    if (x >= l && x <= l + w && y >= top && y <= top + h) return t;
  }
  return -1;
}

// What is under a canvas position: {tile, axis, slice, col, row} with continuous col/row, or null.
function locate(x, y, tile = null, clamp = false) {
  if (!back()) return null;
  const t = tile ?? tileAt(x, y);
  if (t < 0) return null;
  const axCorSag = nv.screenSlices[t].axCorSag;
  const frac = nv.screenXY2TextureFrac(x, y, t, !clamp);
  if (frac[0] < 0 && !clamp) return null;
  const f = clamp ? Array.from(frac, (v) => Math.min(1, Math.max(0, v))) : Array.from(frac);
  const nat = fracToNative(f);
  const axis = axisOfTile(axCorSag);
  const [col, row, s] = sliceCoords(axis, nat);
  const [h, w] = sliceShape(axis);
  return {
    tile: t,
    axCorSag,
    axis,
    slice: Math.min(nativeDims()[NATIVE_OF_AXIS[axis]] - 1, Math.max(0, Math.round(s))),
    col: Math.min(w - 1, Math.max(0, col)),
    row: Math.min(h - 1, Math.max(0, row)),
    native: nat,
  };
}

function canvasPos(e) {
  const rect = glCanvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || 1;
  return [(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr];
}

// Canvas position (device pixels) of native voxel nat on tile t, or null when that tile shows another slice.
function screenOf(nat, t) {
  const s = nv.screenSlices[t];
  if (!s || s.axCorSag > 2) return null;
  const axis = axisOfTile(s.axCorSag);
  const n = NATIVE_OF_AXIS[axis];
  if (crosshairNative()[n] !== Math.round(nat[n])) return null;
  const r = nv.frac2canvasPosWithTile(nativeToFrac(nat), s.axCorSag);
  return r && r.tileIndex === t ? r.pos : null;
}

// Move the crosshair so that the tiles show slice `slice` along `axis`.
function goTo(axis, slice) {
  const nat = crosshairNative();
  nat[NATIVE_OF_AXIS[axis]] = slice;
  nv.scene.crosshairPos = nativeToFrac(nat);
  nv.drawScene();
  if (typeof nv.createOnLocationChange === "function") nv.createOnLocationChange();
  drawUi();
}

// -- the label layer --------------------------------------------------------------------------------------------
// Labels are NiiVue's "drawing": a uint8 bitmap in NiiVue's RAS voxel order (dimsRAS) and one R8 GPU texture. An
// edit writes the voxels it changed into the bitmap and uploads only their box (texSubImage3D), so its cost follows
// what changed, not the size of the volume; the whole label volume is fetched once, when a volume is opened.
let rasIndex = null; // per native axis n: Int32Array of each native index's offset in the RAS bitmap

function buildRasIndex() {
  const d = back().dimsRAS;
  const stride = [1, d[1], d[1] * d[2]];
  const dims = nativeDims();
  const tables = [null, null, null];
  for (const { a, n, flip, last } of rasAxes()) {
    const t = new Int32Array(dims[n]);
    for (let i = 0; i < dims[n]; i++) t[i] = (flip ? last - i : i) * stride[a];
    tables[n] = t;
  }
  rasIndex = tables;
}

const bitmapIndex = (i, j, k) => rasIndex[0][i] + rasIndex[1][j] + rasIndex[2][k];
const labelAt = (i, j, k) => (nv && nv.drawBitmap ? nv.drawBitmap[bitmapIndex(i, j, k)] : 0);

// native voxel (i, j, k) of pixel (col, row) of slice s along axis
const nativeOf = (axis, s, col, row) => ({ z: [col, row, s], y: [col, s, row], x: [s, col, row] })[axis];

// Upload the native box lo..hi (inclusive [i, j, k]) of the bitmap to the GPU and redraw.
function uploadBox(lo, hi) {
  const d = back().dimsRAS;
  const r0 = [0, 0, 0];
  const r1 = [0, 0, 0];
  for (const { a, n, flip, last } of rasAxes()) {
    r0[a] = flip ? last - hi[n] : lo[n];
    r1[a] = flip ? last - lo[n] : hi[n];
  }
  const [w, h, depth] = [r1[0] - r0[0] + 1, r1[1] - r0[1] + 1, r1[2] - r0[2] + 1];
  const bm = nv.drawBitmap;
  const plane = d[1] * d[2];
  let sub;
  if (w === d[1] && h === d[2]) {
    sub = bm.subarray(r0[2] * plane, (r1[2] + 1) * plane);
  } else {
    sub = new Uint8Array(w * h * depth);
    let o = 0;
    for (let z = r0[2]; z <= r1[2]; z++) {
      for (let y = r0[1]; y <= r1[1]; y++) {
        const at = r0[0] + y * d[1] + z * plane;
        sub.set(bm.subarray(at, at + w), o);
        o += w;
      }
    }
  }
  const gl = nv.gl;
  gl.activeTexture(gl.TEXTURE7); // NiiVue's unit for the drawing texture
  gl.bindTexture(gl.TEXTURE_3D, nv.drawTexture);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  gl.texSubImage3D(gl.TEXTURE_3D, 0, r0[0], r0[1], r0[2], w, h, depth, gl.RED, gl.UNSIGNED_BYTE, sub);
  redraw();
}

// Draw on the next frame; state.drawnAt is when the frame after it began (the overlay is on screen then).
let redrawPending = false;
function redraw() {
  if (redrawPending) return;
  redrawPending = true;
  requestAnimationFrame(() => {
    redrawPending = false;
    nv.drawScene();
    drawUi();
    requestAnimationFrame(() => {
      state.drawnAt = performance.now();
    });
  });
}

// bitmap offsets of slice s along axis: pixel (col, row) is at cols[col] + rows[row] + at
function sliceTables(axis, s) {
  const [ti, tj, tk] = rasIndex;
  return { z: [ti, tj, tk[s]], y: [ti, tk, tj[s]], x: [tj, tk, ti[s]] }[axis];
}

function readSlice(axis, s) {
  const [h, w] = sliceShape(axis);
  const [cols, rows, at] = sliceTables(axis, s);
  const bm = nv.drawBitmap;
  const out = new Uint8Array(h * w);
  for (let row = 0; row < h; row++) {
    const r = rows[row] + at;
    for (let col = 0; col < w; col++) out[row * w + col] = bm[r + cols[col]];
  }
  return out;
}

function writeSlice(axis, s, values) {
  const [h, w] = sliceShape(axis);
  const [cols, rows, at] = sliceTables(axis, s);
  const bm = nv.drawBitmap;
  for (let row = 0; row < h; row++) {
    const r = rows[row] + at;
    for (let col = 0; col < w; col++) bm[r + cols[col]] = values[row * w + col];
  }
  uploadBox(nativeOf(axis, s, 0, 0), nativeOf(axis, s, w - 1, h - 1));
}

async function inflate(b64) {
  const stream = b64ToBlob(b64, "application/octet-stream").stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// A server answer's patch (the changed box's label values, z slowest) into the bitmap and onto the GPU.
async function applyPatch(p) {
  if (!p) return;
  const values = await inflate(p.data);
  const [[z0, z1], [y0, y1], [x0, x1]] = p.region_zyx;
  if (values.length !== (z1 - z0 + 1) * (y1 - y0 + 1) * (x1 - x0 + 1)) throw new Error("a label patch has the wrong size");
  const bm = nv.drawBitmap;
  const [ti, tj, tk] = rasIndex;
  let o = 0;
  for (let k = z0; k <= z1; k++) {
    for (let j = y0; j <= y1; j++) {
      const at = tk[k] + tj[j];
      for (let i = x0; i <= x1; i++) bm[at + ti[i]] = values[o++];
    }
  }
  uploadBox([x0, y0, z0], [x1, y1, z1]);
}

// A label PNG (grey values = label values) -> Uint8Array of its pixels, row by row.
async function decodeLabelPng(blob) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  const g = c.getContext("2d", { willReadFrequently: true });
  g.drawImage(bmp, 0, 0);
  const rgba = g.getImageData(0, 0, bmp.width, bmp.height).data;
  const out = new Uint8Array(bmp.width * bmp.height);
  for (let p = 0; p < out.length; p++) out[p] = rgba[4 * p];
  return { width: bmp.width, height: bmp.height, data: out };
}

function b64ToBlob(b64, type = "image/png") {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

// One slice as the server holds it (after a failed edit: the page shows the server's state).
async function refetchSlice(axis, s) {
  const r = await api("GET", `${base()}/mask/${axis}/${s}.png`, undefined, { raw: true });
  const { width, height, data } = await decodeLabelPng(await r.blob());
  const [h, w] = sliceShape(axis);
  if (width !== w || height !== h) throw new Error(`slice mask is ${width}x${height}, expected ${w}x${h}`);
  writeSlice(axis, s, data);
}

// The whole label volume from mask.nii.gz (uint8 NIfTI-1, the native grid) into a new drawing: once per volume.
async function loadLabels() {
  const r = await api("GET", `${base()}/mask.nii.gz`, undefined, { raw: true });
  const gz = await r.arrayBuffer();
  const buf = await new Response(new Blob([gz]).stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
  const dv = new DataView(buf);
  const little = dv.getInt32(0, true) === 348;
  const voxOffset = Math.round(dv.getFloat32(108, little));
  const [nx, ny, nz] = nativeDims();
  if (buf.byteLength - voxOffset < nx * ny * nz) throw new Error("mask.nii.gz is smaller than the volume");
  const src = new Uint8Array(buf, voxOffset, nx * ny * nz);
  nv.createEmptyDrawing();
  buildRasIndex();
  const bm = nv.drawBitmap;
  const [ti, tj, tk] = rasIndex;
  let o = 0;
  for (let k = 0; k < nz; k++) {
    for (let j = 0; j < ny; j++) {
      const at = tk[k] + tj[j];
      for (let i = 0; i < nx; i++) bm[at + ti[i]] = src[o++];
    }
  }
  nv.refreshDrawing(false);
  applyColors();
}

// The label volume in native order (NIfTI voxel order, i fastest), for scripts and tests.
function labelVolume() {
  const [nx, ny, nz] = nativeDims();
  const out = new Uint8Array(nx * ny * nz);
  let o = 0;
  for (let k = 0; k < nz; k++) for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) out[o++] = labelAt(i, j, k);
  return out;
}

// -- opening a volume ----------------------------------------------------------------------------------------
async function ensureSession() {
  if (state.sid) return state.sid;
  const r = await api("POST", "/api/sessions");
  state.sid = r.session;
  history.replaceState(null, "", `#session=${state.sid}`);
  return state.sid;
}

function openOptions() {
  const opts = { preset: $("#preset").value };
  const w = $("#window").value.trim();
  if (w) {
    const parts = w.split(",").map(Number);
    if (parts.length !== 2 || parts.some((v) => !Number.isFinite(v))) throw new Error("window: expected level,width");
    opts.window = parts;
  }
  if ($("#resample").checked) opts.resample = true;
  return opts;
}

// Opening another volume replaces this one's labels in the session: ask first when they hold unsaved changes.
function confirmReplace() {
  const labelled = [...state.labels.values()].some((l) => l.voxels > 0);
  if (!state.info || !state.history.unsaved || !labelled) return true;
  return window.confirm(`The labels of ${state.info.source} have changes that were not saved. Open another volume and discard them?`);
}

// Map the open volume with another intensity preset / window: the server re-maps what the viewer and the model
// see, labels and undo stay; the page reloads the picture and keeps its label layer.
function setWindow() {
  if (!state.info) return;
  let opts;
  try {
    opts = openOptions();
  } catch (e) {
    return showError(e);
  }
  return enqueue(async () => {
    setStatus("applying the intensity mapping…");
    const body = { preset: opts.preset };
    if (opts.window) body.window = opts.window;
    const info = await api("POST", `${base()}/window`, body);
    state.info = info;
    await reloadPicture();
    $("#volume-name").textContent = volumeTitle(info);
    const p = info.preset || {};
    const lw = p.window_level_width ? ` (level ${p.window_level_width[0]}, width ${p.window_level_width[1]})` : "";
    setStatus(`intensity mapping: ${p.preset}${lw}; labels and undo kept`, "ok");
    watchEncoding(info.encoding);
  });
}

// reload volume.nii.gz into the viewer, keeping the label layer, crosshair and view
async function reloadPicture() {
  const labels = nv.drawBitmap.slice();
  const at = nv.scene.crosshairPos.slice();
  await nv.loadVolumes([{ url: `${base()}/volume.nii.gz?v=${Date.now()}`, name: "volume.nii.gz", colormap: "gray" }]);
  nv.createEmptyDrawing();
  buildRasIndex();
  nv.drawBitmap.set(labels);
  nv.refreshDrawing(false);
  applyColors();
  applyContrast();
  applyConvention();
  nv.scene.crosshairPos = at;
  redraw();
}

const volumeTitle = (info) => {
  const [z, y, x] = info.shape;
  return `${info.source} · ${x}×${y}×${z} · ${info.modality || "?"} · ${info.preset?.preset ?? ""}`;
};

async function openUpload(file) {
  if (!file) return;
  await queue;
  if (!confirmReplace()) return setStatus("kept the open volume");
  const opts = openOptions();
  await ensureSession();
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("preset", opts.preset);
  if (opts.window) form.append("window", opts.window.join(","));
  if (opts.resample) form.append("resample", "true");
  setStatus(`uploading ${file.name} (${(file.size / 1048576).toFixed(1)} MB)…`);
  const info = await api("POST", `${base()}/volume`, form);
  await showVolume(info);
}

async function openPath(path, mask = "") {
  if (!path) throw new Error("type a path relative to the server's data folder");
  await queue;
  if (!confirmReplace()) return setStatus("kept the open volume");
  const opts = openOptions();
  await ensureSession();
  setStatus(`opening ${path}${mask ? ` with ${mask}` : ""}…`);
  const info = await api("POST", `${base()}/volume`, mask ? { path, mask, ...opts } : { path, ...opts });
  await showVolume(info);
  if (mask) setStatus(`opened ${info.source} with the mask ${mask}: ${describeSegments()}`, "ok");
}

// load a mask file over the open volume (to review it); the labels come back as one patch-free reload
async function uploadMask(file) {
  if (!file) return;
  if (!state.info) throw new Error("open a volume first, then load its mask");
  await queue;
  if (!confirmReplace()) return setStatus("kept the current labels");
  const form = new FormData();
  form.append("file", file, file.name);
  setStatus(`loading the mask ${file.name}…`);
  const info = await api("POST", `${base()}/mask`, form);
  state.info = info;
  state.labels.clear();
  setLabels(info.labels || []);
  if (!state.labels.size) state.labels.set(1, { value: 1, name: null, voxels: 0 });
  state.label = Math.min(...state.labels.keys());
  renderLabels();
  await loadLabels();
  renderHistory({ undo: info.undo_steps, redo: info.redo_steps, unsaved: info.unsaved });
  setStatus(`loaded the mask ${file.name}: ${describeSegments()}`, "ok");
}

const describeSegments = () => {
  const segs = [...state.labels.values()].filter((l) => l.voxels > 0);
  return segs.length ? segs.map((l) => `${l.name || `label ${l.value}`} (${l.slices.length} slices)`).join(", ") : "no labels";
};

async function showVolume(info) {
  if (!nv) throw new Error("the viewer is not available (see the message above)");
  state.info = info;
  state.prompt = null;
  $("#prompt-info").textContent = describePrompt(null);
  state.lastSlice.clear();
  state.labels.clear();
  setLabels(info.labels || []);
  if (!state.labels.size) state.labels.set(1, { name: null, voxels: 0 });
  state.label = Math.min(...state.labels.keys());
  renderLabels();
  setStatus(`loading ${info.source} into the viewer…`);
  await nv.loadVolumes([{ url: `${base()}/volume.nii.gz`, name: "volume.nii.gz", colormap: "gray" }]);
  nv.setDrawOpacity(Number($("#opacity").value) / 100);
  await loadLabels();
  renderHistory({ undo: info.undo_steps ?? 0, redo: info.redo_steps ?? 0, unsaved: Boolean(info.unsaved) });
  applyContrast();
  applyConvention();
  setView(info.is_2d ? "axial" : $("#view").value);
  const [z, y, x] = info.shape;
  $("#volume-name").textContent = volumeTitle(info);
  syncWindowFields(info);
  $("#download-link").hidden = true;
  $("#propagate").disabled = Boolean(info.is_2d);
  $("#propagate").title = info.is_2d ? "a 2D picture has nothing to propagate to" : "Segment the selected label through the volume from its last segmented slice (g)";
  setStatus(`opened ${info.source}: ${x}×${y}×${z} voxels; drag a box around an object`, "ok");
  drawUi();
  watchEncoding(info.encoding);
}

// show the mapping in force (a restored session's, or the server's choice for "auto") in the header's fields
function syncWindowFields(info) {
  const p = info.preset || {};
  const sel = $("#preset");
  if ([...sel.options].some((o) => o.value === p.preset)) sel.value = p.preset;
  $("#window").value = p.preset === "window" && p.window_level_width ? p.window_level_width.map((v) => Math.round(v)).join(",") : "";
}

// -- labels --------------------------------------------------------------------------------------------------
// the server's segment list (GET .../labels, and every change's answer); a label added in the page and still
// empty stays listed
function setLabels(list) {
  for (const l of list) state.labels.set(l.value, { ...l });
  for (const [v, l] of state.labels) {
    if (!list.some((x) => x.value === v)) Object.assign(l, { voxels: 0, ml: 0, slices: [] });
  }
}

async function refreshLabels() {
  const r = await api("GET", `${base()}/labels`);
  setLabels(r.labels);
  renderLabels();
  applyColors();
}

// what every change answers besides its patch: the segments and the undo/redo history
function afterChange(r) {
  if (r.labels) {
    setLabels(r.labels);
    renderLabels();
    applyColors(); // an undone delete brings a segment's colour and visibility back
  }
  if (r.history) renderHistory(r.history);
}

function renderHistory(h) {
  state.history = h;
  $("#undo").disabled = !h.undo;
  $("#redo").disabled = !h.redo;
  $("#undo").title = `Undo the last change (ctrl+z): ${h.undo} step${h.undo === 1 ? "" : "s"}`;
  $("#redo").title = `Redo (ctrl+shift+z or ctrl+y): ${h.redo} step${h.redo === 1 ? "" : "s"}`;
}

function renderLabels() {
  const ul = $("#labels");
  ul.replaceChildren();
  const el = (tag, props = {}) => Object.assign(document.createElement(tag), props);
  for (const v of [...state.labels.keys()].sort((a, b) => a - b)) {
    const l = state.labels.get(v);
    const li = el("li");
    li.dataset.value = String(v);
    li.dataset.testid = `label-${v}`;
    if (v === state.label) li.classList.add("selected");
    if (l.locked) li.classList.add("locked");
    const hex = `#${colorOf(v).map((c) => c.toString(16).padStart(2, "0")).join("")}`;
    const sw = el("input", { type: "color", className: "swatch", value: hex, title: "colour (saved with the session)" });
    sw.dataset.testid = `label-color-${v}`;
    sw.addEventListener("change", guard(() => setSegment(v, { color: [1, 3, 5].map((i) => parseInt(sw.value.slice(i, i + 2), 16)) })));
    const val = el("span", { className: "value", textContent: String(v) });
    const name = el("input", { type: "text", value: l.name || "", placeholder: `label ${v}`, title: "name (saved with the mask)" });
    name.dataset.testid = `label-name-${v}`;
    name.addEventListener("change", guard(() => renameLabel(v, name.value)));
    // a setting shown as a button (visible defaults to on, locked and reviewed to off); a click flips it
    const toggle = (key, on, off, title) => {
      const pressed = key === "visible" ? l.visible !== false : Boolean(l[key]);
      const b = el("button", { className: `toggle ${key}`, textContent: pressed ? on : off, title });
      b.dataset.testid = `label-${key}-${v}`;
      b.setAttribute("aria-pressed", String(pressed));
      b.addEventListener("click", guard(() => setSegment(v, { [key]: !pressed })));
      return b;
    };
    const visible = toggle("visible", "◉", "○", "show or hide this segment");
    const lock = toggle("locked", "⊠", "⊡", "locked: new predictions and brush strokes leave it as it is");
    const reviewed = toggle("reviewed", "✓", "·", "reviewed: the annotator checked this segment (saved with the session)");
    const prev = el("button", { className: "toggle", textContent: "‹", title: "previous axial slice holding this segment" });
    const next = el("button", { className: "toggle", textContent: "›", title: "next axial slice holding this segment" });
    prev.dataset.testid = `label-prev-${v}`;
    next.dataset.testid = `label-next-${v}`;
    prev.addEventListener("click", () => jumpSlice(v, -1));
    next.addEventListener("click", () => jumpSlice(v, 1));
    const more = el("button", { className: "toggle", textContent: "⋯", title: "merge into the selected segment, or delete" });
    more.dataset.testid = `label-more-${v}`;
    more.addEventListener("click", guard(() => segmentMenu(v)));
    const row1 = el("div", { className: "seg-row" });
    row1.append(sw, val, name, visible, lock, reviewed);
    const count = el("div", { className: "count" });
    count.dataset.testid = `label-count-${v}`;
    const n = l.slices ? l.slices.length : 0;
    count.textContent = l.voxels
      ? `${l.voxels} vx${l.ml != null ? ` · ${l.ml.toFixed(2)} mL` : ""} · ${n} slice${n === 1 ? "" : "s"}`
      : "empty";
    const term = el("select", { className: "term", title: "what the segment is (SNOMED CT category and type, saved in DICOM-SEG and Slicer NRRD)" });
    term.dataset.testid = `label-type-${v}`;
    for (const [category, types] of Object.entries(state.info?.segment_terms || { tissue: ["tissue"] })) {
      const group = el("optgroup", { label: category });
      for (const t of types) group.append(el("option", { value: `${category}|${t}`, textContent: t }));
      term.append(group);
    }
    term.value = `${l.category || "tissue"}|${l.type || "tissue"}`;
    term.addEventListener("change", guard(() => {
      const [category, type] = term.value.split("|");
      return setSegment(v, { category, type });
    }));
    const row2 = el("div", { className: "seg-row" });
    row2.append(count, term, prev, next, more);
    li.append(row1, row2);
    li.addEventListener("click", (e) => {
      if (e.target === li || e.target === val || e.target === count || e.target.classList.contains("seg-row")) selectLabel(v);
    });
    ul.append(li);
  }
}

// change a segment's settings on the server (name, colour, visible, locked, reviewed) and show the answer
async function setSegment(v, settings) {
  if (!state.info) throw new Error("open a volume first");
  const r = await api("PUT", `${base()}/segments/${v}`, settings);
  setLabels(r.labels);
  renderLabels();
  applyColors();
}

// move the crosshair to the next (dir 1) or previous (-1) axial slice holding segment v
function jumpSlice(v, dir) {
  const slices = state.labels.get(v)?.slices || [];
  if (!state.info || !slices.length) return setStatus(`segment ${v} has no voxels`, "error");
  const here = crosshairNative()[2];
  const target = dir > 0 ? slices.find((k) => k > here) ?? slices[0] : [...slices].reverse().find((k) => k < here) ?? slices[slices.length - 1];
  goTo("z", target);
  setStatus(`segment ${v}: axial slice ${target} (${slices.indexOf(target) + 1} of ${slices.length})`, "ok");
}

function segmentMenu(v) {
  const into = state.label !== v ? state.label : null;
  const choice = window.prompt(
    `Segment ${v}: type "delete" to erase it${into ? `, or "merge" to merge it into the selected segment ${into}` : ""}.`,
    "",
  );
  if (choice === "delete") return deleteSegment(v);
  if (choice === "merge" && into) return mergeSegment(v, into);
}

// a slice tool (medsamkit.masks) on the selected segment; fill_holes on the current axial slice unless `all`
function segmentTool(tool, all = false) {
  if (!state.info) return showError(new Error("open a volume first"));
  const v = state.label;
  const body = { tool };
  if (tool === "fill_holes" && !all && !state.info.is_2d) body.slice = crosshairNative()[2];
  if (tool === "remove_small") body.min_voxels = Math.max(1, Math.round(Number($("#min-voxels").value) || 1));
  if (tool === "smooth") body.radius = Math.min(10, Math.max(1, Math.round(Number($("#smooth-radius").value) || 1)));
  return enqueue(async () => {
    const r = await api("POST", `${base()}/segments/${v}/tool`, body);
    await applyPatch(r.patch);
    afterChange(r);
    const where = body.slice !== undefined ? ` on axial slice ${body.slice}` : "";
    setStatus(`${tool.replace("_", " ")} on segment ${v}${where}: ${r.changed ? "done" : "nothing to change"}`, "ok");
  });
}

function deleteSegment(v) {
  return enqueue(async () => {
    const r = await api("DELETE", `${base()}/segments/${v}`);
    await applyPatch(r.patch);
    state.labels.delete(v);
    afterChange(r);
    if (!state.labels.size) state.labels.set(1, { value: 1, name: null, voxels: 0 });
    if (!state.labels.has(state.label)) selectLabel(Math.min(...state.labels.keys()));
    setStatus(`deleted segment ${v} (undo brings it back)`, "ok");
  });
}

function mergeSegment(v, into) {
  return enqueue(async () => {
    const r = await api("POST", `${base()}/segments/${v}/merge`, { into });
    await applyPatch(r.patch);
    state.labels.delete(v);
    afterChange(r);
    setStatus(`merged segment ${v} into ${into}`, "ok");
  });
}

function selectLabel(v) {
  if (!state.labels.has(v)) return;
  state.label = v;
  state.prompt = null;
  renderLabels();
  drawUi();
}

async function renameLabel(v, name) {
  if (!state.info) throw new Error("open a volume first");
  const r = await api("PUT", `${base()}/labels/${v}`, { name });
  state.labels.get(v).name = r.name;
  setStatus(`label ${v} ${r.name ? `is now "${r.name}"` : "has no name"}`, "ok");
}

async function addLabel() {
  if (!state.info) throw new Error("open a volume first");
  const v = Math.max(0, ...state.labels.keys()) + 1;
  if (v > 255) throw new Error("labels are 1..255");
  state.labels.set(v, { name: null, voxels: 0 });
  selectLabel(v);
  await renameLabel(v, `label ${v}`); // a named label is kept by the server while it has no voxels
  renderLabels();
}

// -- segmenting ----------------------------------------------------------------------------------------------
function describePrompt(p) {
  if (!p) return "Drag a box on a slice, then refine with clicks. Esc starts a new prompt.";
  const parts = [];
  if (p.box) parts.push(`box [${p.box.join(", ")}]`);
  const pos = p.points.filter((q) => q[2] === 1).length;
  const neg = p.points.length - pos;
  if (pos) parts.push(`${pos} + click${pos > 1 ? "s" : ""}`);
  if (neg) parts.push(`${neg} − click${neg > 1 ? "s" : ""}`);
  return `label ${p.label}, ${p.axis} slice ${p.slice}: ${parts.join(", ")} (Esc: new prompt)`;
}

function segment(prompt) {
  $("#prompt-info").textContent = describePrompt(prompt);
  drawUi();
  return enqueue(async () => {
    const body = { axis: prompt.axis, slice: prompt.slice, label: prompt.label };
    if (prompt.box) body.box = prompt.box;
    if (prompt.points.length) body.points = prompt.points;
    const r = await api("POST", `${base()}/segment`, body);
    await applyPatch(r.patch);
    afterChange(r);
    state.lastSlice.set(r.label, { axis: r.axis, slice: r.slice });
    if (r.warnings && r.warnings.length) setStatus(`label ${r.label} on ${r.axis} slice ${r.slice}: ${r.warnings.join("; ")}`, "error");
    else setStatus(`label ${r.label} on ${r.axis} slice ${r.slice}: ${r.pixels} px, score ${r.score} (${r.ms} ms)`, "ok");
  });
}

function addPoint(loc, positive) {
  const pt = [Math.round(loc.col), Math.round(loc.row), positive ? 1 : 0];
  let p = state.prompt;
  if (!p || p.axis !== loc.axis || p.slice !== loc.slice || p.label !== state.label) {
    p = { axis: loc.axis, slice: loc.slice, label: state.label, box: null, points: [] };
  }
  p.points.push(pt);
  state.prompt = p;
  if (!p.box && !p.points.some((q) => q[2] === 1)) {
    $("#prompt-info").textContent = describePrompt(p);
    drawUi();
    setStatus("a negative click alone selects nothing: add a positive click or a box", "error");
    return;
  }
  segment(p);
}

function finishBox(d) {
  const [c0, r0] = d.start;
  const [c1, r1] = d.end;
  if (Math.hypot(d.endPx[0] - d.startPx[0], d.endPx[1] - d.startPx[1]) < 4) {
    setStatus("drag to draw a box (click with the + tool for a point)");
    drawUi();
    return;
  }
  const box = [Math.min(c0, c1), Math.min(r0, r1), Math.max(c0, c1), Math.max(r0, r1)].map(Math.round);
  state.prompt = { axis: d.axis, slice: d.slice, label: state.label, box, points: [] };
  segment(state.prompt);
}

// -- brush ---------------------------------------------------------------------------------------------------
// A stroke marks the pixels it touched (and shows them at once); the edit sent to the server applies them to
// the slice as it is then, so a stroke made while a segmentation was still running does not undo its result.
function paintAt(d, col, row) {
  const r = state.brush;
  const [h, w] = [d.h, d.w];
  const c0 = Math.round(col);
  const r0 = Math.round(row);
  const bm = nv.drawBitmap;
  const [cols, rows, at] = sliceTables(d.axis, d.slice);
  const [ylo, yhi, xlo, xhi] = [Math.max(0, r0 - r), Math.min(h - 1, r0 + r), Math.max(0, c0 - r), Math.min(w - 1, c0 + r)];
  for (let y = ylo; y <= yhi; y++) {
    for (let x = xlo; x <= xhi; x++) {
      if ((x - c0) ** 2 + (y - r0) ** 2 > r * r) continue;
      d.touched[y * w + x] = 1;
      const v = cols[x] + rows[y] + at;
      if (locked(bm[v], d.label)) continue; // a locked segment keeps its pixels (the server checks again)
      if (!d.erase) bm[v] = d.label;
      else if (bm[v] === d.label) bm[v] = 0;
    }
  }
  const box = d.dirty;
  d.dirty = box ? [Math.min(box[0], xlo), Math.min(box[1], ylo), Math.max(box[2], xhi), Math.max(box[3], yhi)] : [xlo, ylo, xhi, yhi];
}

// upload what the stroke painted since the last upload
function flushStroke(d) {
  if (!d.dirty || d.dirty[0] > d.dirty[2] || d.dirty[1] > d.dirty[3]) return;
  const [c0, r0, c1, r1] = d.dirty;
  d.dirty = null;
  uploadBox(nativeOf(d.axis, d.slice, c0, r0), nativeOf(d.axis, d.slice, c1, r1));
}

function strokeTo(d, col, row) {
  const [pc, pr] = d.last;
  const steps = Math.max(1, Math.ceil(Math.hypot(col - pc, row - pr) / Math.max(0.5, state.brush / 2)));
  for (let s = 1; s <= steps; s++) paintAt(d, pc + ((col - pc) * s) / steps, pr + ((row - pr) * s) / steps);
  d.last = [col, row];
  flushStroke(d);
}

// a value the brush of `label` must not change: another segment that is locked
const locked = (value, label) => value !== 0 && value !== label && Boolean(state.labels.get(value)?.locked);

function finishStroke(d) {
  enqueue(async () => {
    const cur = readSlice(d.axis, d.slice);
    const mask = new Uint8Array(cur.length);
    for (let p = 0; p < cur.length; p++) {
      const painted = d.touched[p] === 1;
      mask[p] = (painted ? !d.erase : cur[p] === d.label) ? 1 : 0;
    }
    let r;
    try {
      r = await api("PUT", `${base()}/mask/${d.axis}/${d.slice}?label=${d.label}`, mask);
    } catch (e) {
      await refetchSlice(d.axis, d.slice); // the server's state after an error
      throw e;
    }
    if (r.patch) await applyPatch(r.patch);
    else await refetchSlice(d.axis, d.slice); // unchanged there: take back what the stroke showed
    afterChange(r);
    state.lastSlice.set(d.label, { axis: d.axis, slice: d.slice });
    setStatus(`${d.erase ? "erased" : "painted"}: label ${d.label} has ${r.pixels} px on ${d.axis} slice ${d.slice}${r.changed ? "" : " (unchanged)"}`, "ok");
  });
}

// -- mouse ---------------------------------------------------------------------------------------------------
function onMouseDown(e) {
  if (e.button !== 0 || state.tool === "navigate" || !back() || !state.info) return;
  const [x, y] = canvasPos(e);
  const loc = locate(x, y);
  if (!loc) return;
  e.stopPropagation(); // NiiVue would move the crosshair
  e.preventDefault();
  if (state.tool === "positive" || state.tool === "negative") {
    addPoint(loc, state.tool === "positive");
  } else if (state.tool === "box") {
    state.drag = { kind: "box", tile: loc.tile, axis: loc.axis, slice: loc.slice, start: [loc.col, loc.row], end: [loc.col, loc.row], startPx: [x, y], endPx: [x, y] };
  } else if (state.tool === "brush" || state.tool === "eraser") {
    const [h, w] = sliceShape(loc.axis);
    const d = { kind: "brush", erase: state.tool === "eraser", tile: loc.tile, axis: loc.axis, slice: loc.slice, label: state.label, h, w, touched: new Uint8Array(h * w), last: [loc.col, loc.row] };
    state.drag = d;
    paintAt(d, loc.col, loc.row);
    flushStroke(d);
  }
  drawUi();
}

function onMouseMove(e) {
  if (!nv || !back()) return;
  const [x, y] = canvasPos(e);
  const d = state.drag;
  if (d) {
    e.stopPropagation();
    const loc = locate(x, y, d.tile, true);
    if (d.kind === "box") {
      d.end = [loc.col, loc.row];
      d.endPx = [x, y];
    } else if (d.kind === "brush") {
      strokeTo(d, loc.col, loc.row);
    }
  }
  const loc = locate(x, y);
  state.hover = loc ? { ...loc, px: [x, y] } : null;
  $("#cursor").textContent = loc
    ? `${loc.axis} slice ${loc.slice} · x ${Math.round(loc.col)} · y ${Math.round(loc.row)} · label ${labelAt(...nativeOf(loc.axis, loc.slice, Math.round(loc.col), Math.round(loc.row)))}`
    : "";
  drawUi();
}

function onMouseUp(e) {
  const d = state.drag;
  if (!d) return;
  state.mouseUpAt = performance.now();
  e.stopPropagation();
  state.drag = null;
  if (d.kind === "box") finishBox(d);
  else if (d.kind === "brush") finishStroke(d);
  drawUi();
}

// -- the drawing layer over NiiVue: box rubber band, prompt markers, brush outline -------------------------------
function drawUi() {
  if (!uiCanvas || !nv) return;
  if (uiCanvas.width !== glCanvas.width || uiCanvas.height !== glCanvas.height) {
    uiCanvas.width = glCanvas.width;
    uiCanvas.height = glCanvas.height;
  }
  const g = uiCanvas.getContext("2d");
  g.clearRect(0, 0, uiCanvas.width, uiCanvas.height);
  if (!back() || !state.info) return;
  const dpr = nv.uiData.dpr || 1;
  g.lineWidth = 1.5 * dpr;
  const d = state.drag;
  if (d && d.kind === "box") {
    g.strokeStyle = "#facc15";
    g.setLineDash([5 * dpr, 4 * dpr]);
    g.strokeRect(d.startPx[0], d.startPx[1], d.endPx[0] - d.startPx[0], d.endPx[1] - d.startPx[1]);
    g.setLineDash([]);
  }
  const p = state.prompt;
  if (p) {
    for (let t = 0; t < (nv.screenSlices || []).length; t++) {
      const s = nv.screenSlices[t];
      if (s.axCorSag > 2 || axisOfTile(s.axCorSag) !== p.axis) continue;
      const at = (col, row) => {
        const nat = { z: [col, row, p.slice], y: [col, p.slice, row], x: [p.slice, col, row] }[p.axis];
        return screenOf(nat, t);
      };
      if (p.box && !(d && d.kind === "box")) {
        const a = at(p.box[0] - 0.5, p.box[1] - 0.5);
        const b = at(p.box[2] + 0.5, p.box[3] + 0.5);
        if (a && b) {
          g.strokeStyle = "#facc15";
          g.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
        }
      }
      for (const q of p.points) {
        const c = at(q[0], q[1]);
        if (!c) continue;
        g.fillStyle = q[2] === 1 ? "#22c55e" : "#ef4444";
        g.strokeStyle = "#fff";
        g.beginPath();
        g.arc(c[0], c[1], 4.5 * dpr, 0, 2 * Math.PI);
        g.fill();
        g.stroke();
      }
    }
  }
  const h = state.hover;
  if ((state.tool === "brush" || state.tool === "eraser") && h) {
    const s = nv.screenSlices[h.tile];
    const horizontalRas = s.axCorSag === 2 ? 1 : 0; // the RAS axis running across the tile
    const pxPerVoxel = (Math.abs(s.leftTopWidthHeight[2]) / s.fovMM[0]) * back().pixDimsRAS[horizontalRas + 1];
    g.strokeStyle = state.tool === "eraser" ? "#f8fafc" : `rgb(${colorOf(state.label).join(",")})`;
    g.beginPath();
    g.arc(h.px[0], h.px[1], Math.max(2, (state.brush + 0.5) * pxPerVoxel), 0, 2 * Math.PI);
    g.stroke();
  }
}

// -- propagate, undo, save -----------------------------------------------------------------------------------
// Where to propagate a label from when this page has not segmented it (a restored session): the crosshair's
// axial slice if the label is there, else the axial slice where the label has the most voxels.
function fullestSlice(label) {
  const slices = state.labels.get(label)?.slices || [];
  if (!slices.length) return null;
  const here = crosshairNative()[2];
  if (slices.includes(here)) return { axis: "z", slice: here };
  const [nx, ny] = nativeDims();
  let best = slices[0];
  let most = -1;
  for (const k of slices) {
    let n = 0;
    for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) if (labelAt(i, j, k) === label) n++;
    if (n > most) [best, most] = [k, n];
  }
  return { axis: "z", slice: best };
}

function propagate() {
  if (!state.info) return showError(new Error("open a volume first"));
  if (state.propagating || state.info.is_2d) return;
  const label = state.label;
  state.propagating = true;
  state.progress = null;
  $("#propagate").disabled = true;
  const bar = $("#progress");
  bar.hidden = false;
  bar.value = 0;
  $("#progress-text").textContent = "starting…";
  const t0 = performance.now();
  let polling = true;
  const poll = async () => {
    while (polling) {
      try {
        const pr = await api("GET", `${base()}/progress`);
        if (polling && pr.total) {
          state.progress = { done: pr.done, total: pr.total };
          bar.max = pr.total;
          bar.value = pr.done;
          $("#progress-text").textContent = `${pr.done}/${pr.total} slices`;
        }
      } catch {
        /* the final answer reports errors */
      }
      await new Promise((res) => setTimeout(res, 250));
    }
  };
  return enqueue(async () => {
    try {
      // decided once the operations queued before this one are done
      const from = state.lastSlice.get(label) || fullestSlice(label);
      if (!from) throw new Error(`label ${label} has no voxels yet: segment it on a slice first`);
      poll();
      setStatus(`propagating label ${label} from ${from.axis} slice ${from.slice}…`);
      const body = { label, slice: from.slice, axis: from.axis };
      // the server propagates through at most limits.max_propagate_slices slices: a window around the slice
      const n = state.info.shape["zyx".indexOf(from.axis)];
      const cap = state.info.limits?.max_propagate_slices ?? n;
      if (n > cap) {
        const lo = Math.max(0, Math.min(from.slice - Math.floor(cap / 2), n - cap));
        body.slices = [lo, lo + cap - 1];
      }
      const r = await api("POST", `${base()}/propagate`, body);
      polling = false;
      bar.max = 1;
      bar.value = 1;
      $("#progress-text").textContent = "done";
      await applyPatch(r.patch);
      afterChange(r);
      const span = r.slices.length ? `slices ${r.slices[0]}–${r.slices[1]}` : "no slices";
      setStatus(`propagated label ${label} along ${r.axis}: ${span}, ${r.voxels} voxels (${((performance.now() - t0) / 1000).toFixed(1)} s)`, "ok");
    } catch (e) {
      $("#progress-text").textContent = "failed";
      throw e;
    } finally {
      polling = false;
      state.propagating = false;
      $("#propagate").disabled = false;
    }
  });
}

function undo(redo = false) {
  if (!state.info) return;
  return enqueue(async () => {
    const r = await api("POST", `${base()}/${redo ? "redo" : "undo"}`);
    await applyPatch(r.patch);
    afterChange(r);
    state.prompt = null;
    $("#prompt-info").textContent = describePrompt(null);
    if (redo) setStatus(`redid ${r.redone} (${r.redo_steps} more redo steps)`, "ok");
    else setStatus(`undid ${r.undone} (${r.remaining} more undo steps)`, "ok");
  });
}

const redo = () => undo(true);

function save() {
  if (!state.info) return showError(new Error("open a volume first"));
  const format = $("#save-format").value;
  return enqueue(async () => {
    setStatus(`saving as ${format}…`);
    const r = await api("POST", `${base()}/save`, { format });
    state.lastSave = r;
    const a = $("#download-link");
    a.href = r.url;
    a.download = r.file;
    a.textContent = `download ${r.file}`;
    a.hidden = false;
    a.click();
    renderHistory({ ...state.history, unsaved: false });
    setStatus(`saved ${r.file}`, "ok");
  });
}

// -- display -------------------------------------------------------------------------------------------------
function applyContrast() {
  const vol = back();
  if (!vol) return;
  let lo = Number($("#cal-min").value);
  let hi = Number($("#cal-max").value);
  if (!(hi > lo)) hi = lo + 1;
  vol.cal_min = lo;
  vol.cal_max = hi;
  nv.updateGLVolume();
}

// 2D pictures get a flipped x axis on their way to RAS; show them as stored (column 0 on the left).
function applyConvention() {
  if (!back()) return;
  const twoD = state.info && state.info.is_2d;
  $("#radiological").disabled = Boolean(twoD);
  nv.setRadiologicalConvention(twoD ? back().permRAS[0] < 0 : $("#radiological").checked);
  nv.setIsOrientationTextVisible(!twoD); // R/A/S letters mean nothing on a photo
  drawUi();
}

function setView(name) {
  const types = { multiplanar: nv.sliceTypeMultiplanar, axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal, render: nv.sliceTypeRender };
  $("#view").value = name;
  nv.setSliceType(types[name] ?? nv.sliceTypeMultiplanar);
  drawUi();
}

function setTool(tool) {
  state.tool = tool;
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
  const v = $("#viewer");
  v.classList.toggle("tool-active", tool !== "navigate");
  v.classList.toggle("tool-brush", tool === "brush");
  v.classList.toggle("tool-eraser", tool === "eraser");
  drawUi();
}

function setBrush(r) {
  state.brush = Math.max(0, Math.min(25, r));
  $("#brush-size").value = String(state.brush);
  $("#brush-size-value").textContent = String(state.brush);
  drawUi();
}

function onKey(e) {
  const typing = e.target instanceof HTMLElement && e.target.closest("input, select, textarea");
  if (typing && e.key !== "Escape") return;
  const k = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && ((k === "z" && e.shiftKey) || k === "y")) {
    e.preventDefault();
    redo();
  } else if ((e.ctrlKey || e.metaKey) && k === "z") {
    e.preventDefault();
    undo();
  } else if ((e.ctrlKey || e.metaKey) && k === "s") {
    e.preventDefault();
    save();
  } else if (e.ctrlKey || e.metaKey || e.altKey) {
    return;
  } else if (TOOL_KEYS[k]) {
    setTool(TOOL_KEYS[k]);
  } else if (k === "s") {
    save();
  } else if (k === "g") {
    propagate();
  } else if (k === "i") {
    segmentTool("fill_between");
  } else if (k === "h") {
    segmentTool("fill_holes", e.shiftKey);
  } else if (k === "[" || k === "]") {
    setBrush(state.brush + (k === "]" ? 1 : -1));
  } else if (/^[1-9]$/.test(k)) {
    selectLabel(Number(k));
  } else if (k === "escape") {
    state.prompt = null;
    state.drag = null;
    $("#prompt-info").textContent = describePrompt(null);
    drawUi();
  } else if ((k === "pageup" || k === "pagedown") && back() && e.target !== glCanvas) {
    nv.moveCrosshairInVox(0, 0, k === "pageup" ? 1 : -1);
  } else {
    return;
  }
  e.preventDefault();
}

// -- start ---------------------------------------------------------------------------------------------------
function wire() {
  $("#file-input").addEventListener("change", guard(async (e) => {
    const f = e.target.files[0];
    e.target.value = "";
    await openUpload(f);
  }));
  $("#path-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guard(openPath)($("#path-input").value.trim(), $("#mask-path").value.trim());
  });
  $("#mask-input").addEventListener("change", guard(async (e) => {
    const f = e.target.files[0];
    e.target.value = "";
    await uploadMask(f);
  }));
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("#brush-size").addEventListener("input", (e) => setBrush(Number(e.target.value)));
  $("#add-label").addEventListener("click", guard(addLabel));
  for (const b of document.querySelectorAll("[data-seg-tool]")) b.addEventListener("click", (e) => segmentTool(b.dataset.segTool, e.shiftKey));
  $("#propagate").addEventListener("click", () => propagate());
  $("#undo").addEventListener("click", () => undo());
  $("#redo").addEventListener("click", () => redo());
  $("#save").addEventListener("click", () => save());
  $("#view").addEventListener("change", (e) => nv && setView(e.target.value));
  $("#radiological").addEventListener("change", () => applyConvention());
  $("#preset").addEventListener("change", () => {
    $("#window").value = ""; // a preset replaces a typed window
    setWindow();
  });
  $("#window").addEventListener("change", () => setWindow());
  $("#contrast").addEventListener("change", (e) => {
    if (e.target.value === "custom") return;
    const [lo, hi] = e.target.value.split(",");
    $("#cal-min").value = lo;
    $("#cal-max").value = hi;
    applyContrast();
  });
  for (const id of ["#cal-min", "#cal-max"]) {
    $(id).addEventListener("change", () => {
      $("#contrast").value = "custom";
      applyContrast();
    });
  }
  $("#opacity").addEventListener("input", (e) => {
    if (back()) nv.setDrawOpacity(Number(e.target.value) / 100);
  });
  document.addEventListener("keydown", onKey);
  const viewer = $("#viewer");
  viewer.addEventListener("mousedown", onMouseDown, true);
  viewer.addEventListener("mousemove", onMouseMove, true);
  window.addEventListener("mouseup", onMouseUp, true);
  viewer.addEventListener("mouseleave", () => {
    state.hover = null;
    drawUi();
  });
  new ResizeObserver(() => requestAnimationFrame(drawUi)).observe(viewer);
}

async function startViewer() {
  try {
    NV = await import("/vendor/niivue/index.js");
  } catch (e) {
    let why = "";
    try {
      const r = await fetch("/vendor/niivue/index.js", { method: "HEAD" });
      if (!r.ok) why = (await fetch("/vendor/niivue/index.js").then((x) => x.json()).catch(() => ({}))).error || `HTTP ${r.status}`;
    } catch {
      /* offline */
    }
    const msg = $("#viewer-message");
    msg.textContent = `The NiiVue viewer could not be loaded: ${why || e.message}. Install it on the server with \`npm ci --prefix src/medsamkit/app/web\` and reload this page.`;
    msg.hidden = false;
    throw new Error("the NiiVue viewer is not installed on the server");
  }
  glCanvas = $("#gl");
  uiCanvas = $("#ui");
  nv = new NV.Niivue({
    backColor: [0, 0, 0, 1],
    crosshairColor: [0.2, 0.75, 1, 0.8], // not red: label 1 is red
    crosshairWidth: 0.25,
    show3Dcrosshair: true,
    isColorbar: false,
    dragAndDropEnabled: false,
    multiplanarShowRender: NV.SHOW_RENDER ? NV.SHOW_RENDER.NEVER : 0,
    viewModeHotKey: "NoKey",
    clipPlaneHotKey: "NoKey",
    cycleClipPlaneHotKey: "NoKey",
    logLevel: "warn",
    loadingText: "open a volume: upload a file or type a path under the server's data folder",
  });
  await nv.attachToCanvas(glCanvas);
  nv.onLocationChange = () => drawUi();
  nv.onIntensityChange = (vol) => {
    if (vol !== back()) return;
    $("#cal-min").value = String(Math.round(vol.cal_min));
    $("#cal-max").value = String(Math.round(vol.cal_max));
    $("#contrast").value = "custom";
  };
  state.ready = true;
}

async function restoreSession() {
  const m = location.hash.match(/session=([A-Za-z0-9_-]{32})/);
  if (!m) return false;
  try {
    const r = await api("GET", `/api/sessions/${m[1]}`);
    state.sid = m[1];
    if (!r.volume) return false;
    await showVolume(r.volume);
    setStatus(`restored session with ${r.volume.source}`, "ok");
    return true;
  } catch (e) {
    if (e.status === 404) {
      history.replaceState(null, "", location.pathname);
      return false;
    }
    throw e;
  }
}

async function main() {
  wire();
  setTool("box");
  setBrush(Number($("#brush-size").value));
  renderLabels();
  await startViewer();
  if (!(await restoreSession())) setStatus("open a volume: upload a file, or type a path under the server's data folder");
}

// a small hook for scripted use and tests
window.medsamkit = {
  state,
  get nv() {
    return nv;
  },
  goTo,
  screenOf,
  locate,
  labelVolume,
  // resolves when no request is queued or in flight and the viewer has drawn the result
  idle: async () => {
    do {
      await queue;
      while (state.pending > 0) await new Promise((r) => setTimeout(r, 20));
    } while (state.pending > 0);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  },
  setTool,
  selectLabel,
  setSegment,
  deleteSegment,
  mergeSegment,
  jumpSlice,
  setWindow,
  segmentTool,
  uploadMask,
};

main().catch(showError);
