// The confirmation dialog: the server's question (a 428 answer), the value
// about to be set, and how long the question stands.  A native modal <dialog>:
// focus stays in it, Escape cancels, and focus returns to where it was.

import { $, formatValue, text } from "./util.js";

let open = null;

export function confirmOperation({ control, value, question, expiresIn }) {
  if (open) open(false);
  const dialog = $("confirm");
  const returnTo = document.activeElement;
  text($("confirm-title"), control.type === "action" ? `Press ${control.label || control.name}?`
    : `Set ${control.label || control.name} to ${formatValue(value, control)}?`);
  text($("confirm-question"), question);
  const left = $("confirm-left");
  const deadline = performance.now() + expiresIn * 1000;
  return new Promise(resolve => {
    const tick = () => {
      const s = Math.max(0, Math.ceil((deadline - performance.now()) / 1000));
      text(left, `${s}\u00a0s`);
      if (s <= 0) finish(false);
    };
    const timer = setInterval(tick, 250);
    const finish = yes => {
      if (!open) return;
      open = null;
      clearInterval(timer);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      if (returnTo && returnTo.focus) returnTo.focus();
      resolve(yes);
    };
    const onClose = () => finish(dialog.returnValue === "confirm");
    open = finish;
    dialog.returnValue = "";
    dialog.addEventListener("close", onClose);
    tick();
    dialog.showModal();
    $("confirm-no").focus();
  });
}

export function confirmOpen() { return open !== null; }
