// lamina's web chat: talks to this server's /v1/chat/completions with streaming (server-sent
// events), keeps the conversation in the page, and never inserts model text as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // [{role, content}] of finished turns
let controller = null;       // AbortController of the reply being streamed
let model = null;

$("api-key").value = sessionStorage.getItem("lamina-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("lamina-api-key", $("api-key").value);
  loadModel();
});
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
$("clear").addEventListener("click", () => { stop(); history.length = 0; $("messages").replaceChildren(); });
$("stop").addEventListener("click", stop);
$("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
});

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch { return response.statusText; }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { showError(await errorText(response)); return; }
  model = (await response.json()).data[0].id;
  $("model").textContent = model;
  showError("");
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function stop() {
  if (controller) controller.abort();
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send() {
  const text = $("input").value;
  if (!text.trim() || controller) return;
  if (!model) await loadModel();
  if (!model) return;
  showError("");
  $("input").value = "";
  addMessage("user", text);
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...history,
                    { role: "user", content: text }];
  const reply = addMessage("assistant", "");
  reply.dataset.done = "false";
  reply.dataset.chunks = "0";
  controller = new AbortController();
  busy(true);
  let content = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model, messages, stream: true,
                             temperature: Number($("temperature").value),
                             max_tokens: Number($("max-tokens").value) }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    content = await readStream(response, (piece) => {
      reply.textContent += piece;
      reply.dataset.chunks = String(Number(reply.dataset.chunks) + 1);
      reply.scrollIntoView({ block: "end" });
    });
  } catch (error) {
    content = reply.textContent;
    if (error.name !== "AbortError") showError(error.message);
  } finally {
    reply.dataset.done = "true";
    controller = null;
    busy(false);
  }
  history.push({ role: "user", content: text }, { role: "assistant", content });
}

// Reads server-sent events ("data: {...}" lines, blank-line separated) until "data: [DONE]".
async function readStream(response, onText) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", content = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return content;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return content;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const piece = chunk.choices.length ? chunk.choices[0].delta.content : null;
        if (piece) { content += piece; onText(piece); }
      }
    }
  }
}

loadModel();
