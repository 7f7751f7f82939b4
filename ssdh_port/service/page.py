"""The search page of the retrieval service: one self-contained HTML document (no
external assets). Pick or drop an image (or press Enter on the drop zone to open
the file dialog), see the query and its nearest items with image, id, label and
Hamming distance (out of the code's bits); "Similar" on a result searches by
that item, and then the results whose label differs from the item's are marked.
The results' images come inside the search answer. Errors appear on the page
(role=alert), and a query the browser cannot show says so instead of a broken
image.

FAVICON is the page's icon (served at /favicon.ico); api_page() is the API's
documentation page, rendered here from the OpenAPI schema (no external scripts,
so it works offline)."""
import html
import json

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SSDH image search</title>
<link rel="icon" href="/favicon.ico" type="image/svg+xml">
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
form { display: flex; flex-wrap: wrap; gap: .8em; align-items: center; }
#drop { border: 2px dashed #888; padding: 1em 1.5em; border-radius: 6px; cursor: pointer; }
#drop.over, #drop:focus { border-color: #06c; outline: none; background: #eef5ff; }
#error { color: #b00; font-weight: bold; }
#query img, .item img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc;
  object-fit: contain; background: #f4f4f4; }
#results { display: flex; flex-wrap: wrap; gap: 12px; list-style: none; padding: 0; }
.item { text-align: center; font-size: 12px; padding: 4px; border: 2px solid transparent; }
.item.wrong { border-color: #c00; background: #fee; }
.item .mark { color: #c00; font-weight: bold; display: block; }
.nopreview { display: inline-block; width: 96px; height: 96px; line-height: 96px; background: #f4f4f4;
  color: #666; font-size: 12px; text-align: center; border: 1px solid #ccc; }
button { font-size: 1em; }
</style></head>
<body>
<main>
<h1>SSDH image search</h1>
<p id="info">__INFO__</p>
<form id="form">
  <label for="file">Query image</label>
  <input type="file" id="file" name="file" accept="image/*">
  <div id="drop" tabindex="0" role="button" aria-label="Drop an image here, or press Enter to choose one">
    or drop an image here</div>
  <label for="k">Results</label>
  <input type="number" id="k" name="k" value="__K__" min="1" max="__MAXK__">
  <button type="submit" id="go">Search</button>
</form>
__ADD__
<p id="status" role="status" aria-live="polite"></p>
<p id="error" role="alert"></p>
<section id="query" aria-label="query"></section>
<ol id="results" aria-label="results"></ol>
</main>
<script>
const CONFIG = __CONFIG__;
// The results' images come inside the answer (one request), not one request each.
const THUMBS = CONFIG.images ? "&thumbnails=true" : "";
// The API token (a writable server, or one that protects reads), sent with each request.
function headers() {
  const field = $("token");
  return field && field.value ? { "Authorization": "Bearer " + field.value } : {};
}
const $ = (id) => document.getElementById(id);
let chosen = null;

function showError(message) { $("error").textContent = message; $("status").textContent = ""; }

function text(tag, content, cls) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (cls) node.className = cls;
  return node;
}

function picture(src, alt) {
  const img = document.createElement("img");
  // An image the browser cannot show (the file was not one) becomes a note, not a broken icon.
  img.onerror = () => img.replaceWith(text("span", "no preview", "nopreview"));
  img.src = src; img.alt = alt;
  return img;
}

function render(results, queryLabel) {
  const list = $("results");
  list.replaceChildren();
  for (const r of results) {
    const li = document.createElement("li");
    li.className = "item";
    li.dataset.id = r.id;
    if (r.same_label === false) li.classList.add("wrong");
    if (CONFIG.images) li.appendChild(picture(r.thumbnail || ("/items/" + r.id + "/image"), "item " + r.id));
    li.appendChild(text("div", "id " + r.id, "id"));
    if (r.label !== null) li.appendChild(text("div", "label " + JSON.stringify(r.label), "label"));
    li.appendChild(text("div", "distance " + r.distance + " / " + CONFIG.bits + " bits", "distance"));
    if (r.same_label === false) li.appendChild(text("span", "different class", "mark"));
    const again = text("button", "Similar");
    again.type = "button";
    again.setAttribute("aria-label", "search by item " + r.id);
    again.onclick = () => searchItem(r.id);
    li.appendChild(again);
    list.appendChild(li);
  }
  const wrong = results.filter(r => r.same_label === false).length;
  $("status").textContent = results.length + " results" +
    (queryLabel === undefined ? "" : ", " + wrong + " of another class");
}

async function answer(response) {
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || ("HTTP " + response.status));
  return body;
}

async function searchFile(file) {
  $("error").textContent = "";
  $("status").textContent = "searching...";
  const query = $("query");
  query.replaceChildren(text("h2", "Query"), picture(URL.createObjectURL(file), "query image"));
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const body = await answer(await fetch("/search?k=" + encodeURIComponent($("k").value) + THUMBS,
                                          { method: "POST", body: form, headers: headers() }));
    render(body.results);
  } catch (err) {
    $("results").replaceChildren();
    query.replaceChildren(text("h2", "Query"), text("span", "no preview", "nopreview"));
    showError(err.message);
  }
}

async function searchItem(id) {
  $("error").textContent = "";
  $("status").textContent = "searching...";
  try {
    const body = await answer(await fetch("/items/" + id + "/neighbors?k=" + encodeURIComponent($("k").value) +
                                          THUMBS, { headers: headers() }));
    const query = $("query");
    query.replaceChildren(text("h2", "Query: item " + id +
      (body.item.label === null ? "" : ", label " + JSON.stringify(body.item.label))));
    if (CONFIG.images) query.appendChild(picture("/items/" + id + "/image", "item " + id));
    render(body.results, body.item.label);
  } catch (err) { showError(err.message); }
}

$("file").addEventListener("change", () => { chosen = $("file").files[0] || null; if (chosen) searchFile(chosen); });
$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!chosen) { showError("choose an image first"); return; }
  searchFile(chosen);
});
if ($("add")) $("add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("addfile").files[0];
  if (!file) { showError("choose an image to add first"); return; }
  const form = new FormData();
  form.append("file", file, file.name);
  if ($("addid").value) form.append("id", $("addid").value);
  if ($("addlabel") && $("addlabel").value) form.append("label", $("addlabel").value);
  $("error").textContent = "";
  try {
    const body = await answer(await fetch("/items", { method: "POST", body: form, headers: headers() }));
    $("status").textContent = "added item " + body.ids.join(", ") + " (" + body.items + " items now)";
    $("info").textContent = body.items + " items, " + CONFIG.bits + "-bit codes";
  } catch (err) { showError(err.message); }
});
const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); }
});
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault(); drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) { chosen = file; searchFile(file); }
});
</script>
</body></html>
"""


_ADD = """<form id="add" aria-label="add to the index">
  <label for="addfile">Add to the index</label>
  <input type="file" id="addfile" name="file" accept="image/*">
  <label for="addid">id</label> <input type="number" id="addid" name="id" placeholder="next">
  __LABEL__<button type="submit" id="addgo">Add</button>
</form>"""
_TOKEN = """<p><label for="token">API token</label> <input type="password" id="token" autocomplete="off"></p>"""


def page(items, bits, max_k, images, labels, writable=False, token_needed=False):
    """The page for an index of `items` codes of `bits` bits; an "add to the index"
    form when the server takes changes, a token field when it needs one."""
    info = f"{items} items, {bits}-bit codes" + ("" if labels else ", no labels")
    config = json.dumps({"images": bool(images), "labels": bool(labels), "bits": int(bits)})
    extra = _TOKEN if writable or token_needed else ""
    if writable:
        label = ('<label for="addlabel">label</label> <input type="number" id="addlabel" name="label"> '
                 if labels else "")
        extra += _ADD.replace("__LABEL__", label)
    return (_PAGE.replace("__INFO__", html.escape(info)).replace("__K__", str(min(20, max_k)))
            .replace("__MAXK__", str(max_k)).replace("__CONFIG__", config).replace("__ADD__", extra))


FAVICON = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
           "<rect width='16' height='16' rx='3' fill='#06c'/>"
           "<path d='M3 4h2v8H3zM7 4h1v8H7zM10 4h3v8h-3z' fill='#fff'/></svg>")


def api_page(openapi):
    """/docs: each path and method of the OpenAPI schema with its summary,
    description and parameters, and a link to the schema itself."""
    rows = []
    for path, methods in openapi.get("paths", {}).items():
        for method, operation in methods.items():
            params = ", ".join(
                f"{p['name']} ({p.get('in', '')}{', required' if p.get('required') else ''})"
                for p in operation.get("parameters", []))
            rows.append(f"<tr><td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}"
                        f"</code></td><td>{html.escape(operation.get('summary', ''))}"
                        f"<div class='d'>{html.escape(operation.get('description', ''))}</div></td>"
                        f"<td>{html.escape(params)}</td></tr>")
    info = openapi.get("info", {})
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(info.get('title', 'API'))}: API</title>"
            "<link rel='icon' href='/favicon.ico' type='image/svg+xml'>"
            "<style>body{font-family:system-ui,sans-serif;margin:1.5em}td{vertical-align:top;padding:.3em .8em;"
            "border-bottom:1px solid #ddd}.d{color:#555;font-size:.9em;white-space:pre-wrap}</style></head><body>"
            f"<h1>{html.escape(info.get('title', 'API'))}</h1><p>{html.escape(info.get('description', ''))}</p>"
            "<p>The machine-readable schema: <a href='/openapi.json'>/openapi.json</a>.</p>"
            "<table><tr><th>method</th><th>path</th><th>what it does</th><th>parameters</th></tr>"
            + "".join(rows) + "</table></body></html>")
