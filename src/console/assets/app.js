// gantry console: the only script, served from /ui/assets (the CSP allows no other).
// Asks before an action whose button carries data-confirm, and keeps pages marked
// data-live current by reloading their live region every few seconds.
"use strict";
document.addEventListener("submit", (e) => {
  const button = e.submitter;
  const ask = button && button.dataset.confirm;
  if (ask && !window.confirm(ask)) e.preventDefault();
});
const live = document.querySelector("[data-live]");
if (live) {
  setInterval(async () => {
    try {
      const r = await fetch(window.location.href, { headers: { "X-Live": "1" }, credentials: "same-origin" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.querySelector("[data-live]");
      if (fresh) live.replaceChildren(...fresh.childNodes);
    } catch (_) { /* the next tick tries again */ }
  }, 3000);
}
