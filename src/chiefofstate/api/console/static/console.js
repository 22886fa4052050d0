// The admin console's only script (docs/console.md): refreshes the parts of a page marked
// data-refresh="SECONDS" from the same URL, and runs the live tail. No framework, no build step.
"use strict";

async function refreshPart(part) {
  try {
    const reply = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
    if (!reply.ok) return;
    const page = new DOMParser().parseFromString(await reply.text(), "text/html");
    const fresh = page.querySelector("[data-refresh]");
    if (fresh) part.replaceChildren(...fresh.childNodes);
  } catch (error) {
    // the node may be restarting: the next round tries again
  }
}

function startRefreshing() {
  const part = document.querySelector("[data-refresh]");
  if (!part) return;
  const seconds = Math.max(1, Number(part.dataset.refresh) || 5);
  window.setInterval(() => { if (!document.hidden) refreshPart(part); }, seconds * 1000);
}

function startTail() {
  const table = document.getElementById("tail");
  if (!table) return;
  const rows = document.getElementById("tail-rows");
  const entity = document.getElementById("tail-entity");
  const type = document.getElementById("tail-type");
  const pause = document.getElementById("tail-pause");
  const status = document.getElementById("tail-status");
  const limit = Number(table.dataset.limit) || 200;
  // Asked again each poll: what was committed from a few seconds before the newest event shown, since
  // another worker may have received an event later than this one did; rows already shown are dropped.
  const overlapMs = 5000;
  const seen = new Set();
  let latest = 0;
  let paused = false;
  let busy = false;

  async function poll() {
    if (paused || busy) return;
    busy = true;
    try {
      const since = latest > overlapMs ? latest - overlapMs : 0;
      const query = new URLSearchParams({ since: String(since), entity: entity.value, type: type.value });
      const reply = await fetch(`${table.dataset.source}?${query}`, { credentials: "same-origin", cache: "no-store" });
      if (!reply.ok) { status.textContent = `the node answered ${reply.status}`; return; }
      const page = new DOMParser().parseFromString(await reply.text(), "text/html");
      const template = page.querySelector("template");
      if (!template) return;
      latest = Math.max(latest, Number(template.dataset.latest) || 0);
      const fresh = Array.from(template.content.children).filter((row) => !seen.has(row.dataset.key));
      fresh.forEach((row) => seen.add(row.dataset.key));
      rows.prepend(...fresh);
      while (rows.children.length > limit) {  // a bounded page
        seen.delete(rows.lastElementChild.dataset.key);
        rows.lastElementChild.remove();
      }
      status.textContent = "following";
    } catch (error) {
      status.textContent = "cannot reach the node; retrying";
    } finally {
      busy = false;
    }
  }

  function restart() { rows.replaceChildren(); seen.clear(); latest = 0; poll(); }
  entity.addEventListener("change", restart);
  type.addEventListener("change", restart);
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    status.textContent = paused ? "paused" : "following";
    if (!paused) poll();
  });
  poll();
  window.setInterval(poll, 1000);
}

document.addEventListener("DOMContentLoaded", () => { startRefreshing(); startTail(); });
