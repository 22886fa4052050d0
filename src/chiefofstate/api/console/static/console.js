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
  let after = 0;
  let paused = false;
  let busy = false;

  async function poll() {
    if (paused || busy) return;
    busy = true;
    try {
      const query = new URLSearchParams({ after: String(after), entity: entity.value, type: type.value });
      const reply = await fetch(`${table.dataset.source}?${query}`, { credentials: "same-origin", cache: "no-store" });
      if (!reply.ok) { status.textContent = `the node answered ${reply.status}`; return; }
      const page = new DOMParser().parseFromString(await reply.text(), "text/html");
      const template = page.querySelector("template");
      if (!template) return;
      after = Number(template.dataset.latest) || after;
      rows.prepend(...Array.from(template.content.children));
      while (rows.children.length > limit) rows.lastElementChild.remove();  // a bounded page
      status.textContent = "following";
    } catch (error) {
      status.textContent = "cannot reach the node; retrying";
    } finally {
      busy = false;
    }
  }

  function restart() { rows.replaceChildren(); after = 0; poll(); }
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
