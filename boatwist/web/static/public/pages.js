// The pages outside the console: count down each [data-countdown] (seconds,
// from Retry-After) once a second; with data-reload, try the page again at 0.
for (const el of document.querySelectorAll("[data-countdown]")) {
  const end = performance.now() + Number(el.dataset.countdown) * 1000;
  const tick = () => {
    const left = Math.max(0, Math.ceil((end - performance.now()) / 1000));
    el.textContent = left + "\u00a0s";
    if (left > 0) return setTimeout(tick, 250);
    if ("reload" in el.dataset) location.reload();
  };
  tick();
}
