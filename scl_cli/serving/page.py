"""The one HTML page of `scl serve` (GET /): type a query or pick an image, see the contact sheet
and the hits; ask a VQA question when the model has the head. No build step, no external assets."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>scl serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:15px system-ui,sans-serif;margin:2rem auto;max-width:980px;padding:0 1rem;color:#222}
 form{display:flex;gap:.5rem;margin:.6rem 0;flex-wrap:wrap;align-items:center}
 input[type=text]{flex:1;min-width:16rem;padding:.4rem}
 #sheet{max-width:100%;margin-top:1rem} .err{color:#b00} small{color:#666}
 table{border-collapse:collapse;margin-top:1rem} td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}
</style></head><body>
<h1>scl serve</h1><p id="health"><small>loading…</small></p>
<form id="text"><input type="text" id="q" placeholder="a red circle" autofocus>
 top <input type="number" id="k" value="10" min="1" max="100" style="width:4rem">
 re-rank <input type="number" id="r" value="0" min="0" max="64" style="width:4rem">
 <button>search</button></form>
<form id="image"><input type="file" id="f" accept="image/*,video/*"><button>search by image</button></form>
<form id="vqa"><input type="file" id="vf" accept="image/*"><input type="text" id="vq" placeholder="what colour is the circle?">
 <button>ask (VQA)</button></form>
<p id="msg"></p><img id="sheet" alt=""><table id="hits"></table>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
async function call(url, opts) {
  const r = await fetch(url, opts); const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText); return body;
}
function show(res) {
  $("msg").textContent = res.hits.length + " hits for " + res.mode + ": " + res.query;
  $("hits").innerHTML = "<tr><th>#</th><th></th><th>score</th><th>item</th></tr>" + res.hits.map((h) =>
    `<tr><td>${h.rank}</td><td><img src="${h.url}" width="64"></td><td>${h.score.toFixed(4)}${h.stage == "rerank" ? " *" : ""}</td>` +
    `<td>${esc(h.captions[0] || h.label)}</td></tr>`).join("");
}
function fail(e) { $("msg").innerHTML = '<span class="err">' + esc(e.message) + "</span>"; }
$("text").onsubmit = async (ev) => {
  ev.preventDefault(); const q = encodeURIComponent($("q").value), k = $("k").value, r = $("r").value;
  try { show(await call(`/search?q=${q}&top_k=${k}&rerank=${r}`)); $("sheet").src = `/search?q=${q}&top_k=${k}&rerank=${r}&format=png`; }
  catch (e) { fail(e); }
};
$("image").onsubmit = async (ev) => {
  ev.preventDefault(); const fd = new FormData(); fd.append("image", $("f").files[0]); fd.append("top_k", $("k").value);
  try { show(await call("/search", {method: "POST", body: fd})); $("sheet").removeAttribute("src"); } catch (e) { fail(e); }
};
$("vqa").onsubmit = async (ev) => {
  ev.preventDefault(); const fd = new FormData(); fd.append("image", $("vf").files[0]); fd.append("question", $("vq").value);
  try { const a = await call("/vqa", {method: "POST", body: fd});
        $("msg").textContent = a.question + " → " + a.top.map((t) => t[0] + " (" + t[1].toFixed(2) + ")").join(", "); }
  catch (e) { fail(e); }
};
call("/health").then((h) => { $("health").innerHTML = "<small>" + esc(h.checkpoint) + " · heads: " + esc(h.heads.join(", ") || "none") +
  " · index: " + esc(h.index ? h.index.count + " items" : "none") + " · " + esc(h.device) + "</small>"; }).catch(fail);
</script></body></html>
"""
