// The dashboard's only script: deleting memories and refreshing the usage figures.
// It talks to /memory-routing/* alone and writes text with textContent, never as HTML.
"use strict";

function showMessage(text, failed) {
  const box = document.getElementById("memory-message");
  if (!box) return;
  box.textContent = text;
  box.classList.toggle("bad", Boolean(failed));
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error && body.error.message ? body.error.message : response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function deleteMemory(button) {
  const id = button.dataset.id;
  const url = "/memory-routing/memories/" + encodeURIComponent(id) + "?" +
    new URLSearchParams({user_id: button.dataset.user});
  button.disabled = true;
  const response = await fetch(url, {method: "DELETE", credentials: "same-origin"});
  if (!response.ok) {
    button.disabled = false;
    showMessage("Could not delete memory " + id + ": " + (await errorText(response)), true);
    return;
  }
  const item = document.getElementById("memory-" + id);
  if (item) item.remove();
  const total = document.getElementById("memory-total");
  if (total) {
    const left = Math.max(0, Number(total.dataset.total) - 1);
    total.dataset.total = String(left);
    total.textContent = left + (left === 1 ? " memory" : " memories");
  }
  showMessage("Deleted memory " + id + ".", false);
}

async function forgetUser(button) {
  const user = button.dataset.user;
  if (!window.confirm("Forget everything remembered for " + user + "? This cannot be undone.")) return;
  button.disabled = true;
  const response = await fetch("/memory-routing/memories?" + new URLSearchParams({user_id: user}),
    {method: "DELETE", credentials: "same-origin"});
  if (!response.ok) {
    button.disabled = false;
    showMessage("Could not forget " + user + ": " + (await errorText(response)), true);
    return;
  }
  const body = await response.json();
  const list = document.getElementById("memory-list");
  if (list) list.replaceChildren();
  const total = document.getElementById("memory-total");
  if (total) { total.dataset.total = "0"; total.textContent = "0 memories"; }
  showMessage("Forgot " + user + ": " + body.deleted + " memories deleted.", false);
}

// Replaces the usage, health and config parts with a fresh copy of the page; the memory
// browser is left alone so a reader is not interrupted.
async function refresh() {
  if (document.visibilityState !== "visible") return;
  const response = await fetch(window.location.href, {credentials: "same-origin"});
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const id of ["usage", "config", "updated", "health-status"]) {
    const now = document.getElementById(id);
    const next = fresh.getElementById(id);
    if (now && next) now.replaceWith(document.importNode(next, true));
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.classList.contains("delete")) deleteMemory(button);
  else if (button.id === "forget-user") forgetUser(button);
});

document.addEventListener("change", (event) => {
  if (event.target.id === "memory-user") {
    const search = document.getElementById("memory-q");
    if (search) search.value = "";
    event.target.form.submit();
  }
});

const updated = document.getElementById("updated");
const seconds = updated ? Number(updated.dataset.refreshSeconds) : 0;
if (seconds > 0) window.setInterval(() => { refresh().catch(() => {}); }, seconds * 1000);
