"""The page `GET /` serves: drop or pick an image, see the top-5 as bars and the attention map.

One self-contained HTML string (kept in a .py file so that every install ships it): no scripts,
fonts or styles from elsewhere, so it works on a machine without a network, and the
Content-Security-Policy below forbids loading any. Class names are set as text, never as HTML.
"""

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vitkit serve</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
  main { max-width: 980px; margin: 0 auto; padding: 24px; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  #model { color: #666; margin: 0 0 16px; }
  #drop { display: block; border: 2px dashed #999; border-radius: 10px; padding: 28px; text-align: center;
          background: #fff; cursor: pointer; }
  #drop.over { border-color: #d9480f; background: #fff4ec; }
  #file { display: none; }
  .controls { margin: 12px 0; }
  #status { min-height: 1.4em; color: #555; }
  #status.error { color: #c92a2a; font-weight: 600; }
  .results { display: flex; gap: 24px; flex-wrap: wrap; margin-top: 8px; }
  figure { margin: 0; }
  figure img { width: 256px; height: 256px; object-fit: contain; background: #fff; border: 1px solid #ddd;
               image-rendering: pixelated; }
  figcaption { color: #666; font-size: 13px; }
  #top { list-style: none; padding: 0; margin: 0; flex: 1; min-width: 300px; }
  #top li { display: grid; grid-template-columns: minmax(3em, 8em) 1fr 4em; align-items: center; gap: 8px;
            margin: 6px 0; }
  .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .bar { height: 16px; background: #d9480f; border-radius: 3px; min-width: 2px; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<main>
  <h1>vitkit serve</h1>
  <p id="model">loading the model's description&hellip;</p>
  <label id="drop" for="file">Drop an image here, or click to pick one
    <input id="file" type="file" accept="image/*">
  </label>
  <div class="controls">
    attention map: <select id="method">
      <option value="rollout">rollout</option>
      <option value="last-layer">last layer (mean of heads)</option>
      <option value="grad-rollout">gradient rollout</option>
    </select>
  </div>
  <p id="status"></p>
  <div class="results">
    <ol id="top"></ol>
    <figure><img id="preview" alt=""><figcaption>your image</figcaption></figure>
    <figure><img id="overlay" alt="">
      <figcaption id="overlay-caption">attention over the model's input</figcaption></figure>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function post(path, file) {
  const response = await fetch(path, {method: "POST", body: file,
                                      headers: {"Content-Type": file.type || "application/octet-stream"}});
  const body = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showTop(top) {
  const rows = top.map((guess) => {
    const row = document.createElement("li");
    const name = document.createElement("span");
    const bar = document.createElement("div");
    const pct = document.createElement("span");
    name.className = "name"; name.textContent = guess.class; name.title = guess.class;
    bar.className = "bar"; bar.style.width = (100 * guess.probability).toFixed(1) + "%";
    pct.className = "pct"; pct.textContent = (100 * guess.probability).toFixed(1) + "%";
    row.append(name, bar, pct);
    return row;
  });
  $("top").replaceChildren(...rows);
}

async function explain(file) {
  const result = await post("/explain?method=" + encodeURIComponent($("method").value), file);
  $("overlay").src = "data:image/png;base64," + result.overlay_png;
  $("overlay-caption").textContent = result.method + (result.class ? " for " + result.class : "") +
                                     " over the model's input";
}

async function classify(file) {
  current = file;
  document.body.dataset.state = "busy";
  status("classifying " + (file.name || "the image") + "\u2026");
  $("top").replaceChildren();
  $("overlay").removeAttribute("src");
  $("preview").src = URL.createObjectURL(file);
  try {
    const [prediction] = await Promise.all([post("/predict?topk=5", file), explain(file)]);
    showTop(prediction.predictions[0].top);
    status("");
    document.body.dataset.state = "done";
  } catch (error) {
    status(error.message, true);
    document.body.dataset.state = "error";
  }
}

$("file").addEventListener("change", () => { if ($("file").files.length) classify($("file").files[0]); });
$("method").addEventListener("change", () => {
  if (current) explain(current).catch((error) => status(error.message, true));
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});

fetch("/info").then((r) => r.json()).then((info) => {
  $("model").textContent = info.model.source + ": " + info.classes.length + " classes, " +
    info.image_size.join("\u00d7") + " px, " + info.model.parameters.toLocaleString() + " parameters, " + info.dtype;
}).catch(() => status("cannot reach the server", true));
</script>
</body>
</html>
"""
