// The console's own script (embedded in the binary; no inline script, so
// the Content-Security-Policy allows scripts from the console only).
// The header checkbox of a DLQ table selects or clears the page's letters.
document.addEventListener("change", (event) => {
  const all = event.target.closest("input[data-select-page]");
  if (!all) return;
  for (const box of document.querySelectorAll("input[name=id]")) box.checked = all.checked;
});
