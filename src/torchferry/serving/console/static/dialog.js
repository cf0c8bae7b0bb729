// A confirmation in a modal <dialog>: a clear summary of what will happen, focus on the
// dialog's Confirm button (on Cancel when the action is destructive, so a stray Enter
// does nothing), Escape (or Cancel) says no, and focus goes back where it was.

import { h } from "./dom.js";

/** Resolves true when the user confirms. `lines` are [term, value] pairs. */
export function confirmAction(title, lines, { confirmLabel = "Confirm", danger = false } = {}) {
  const previous = document.activeElement;
  return new Promise((resolve) => {
    const confirm = h(`button${danger ? ".danger" : ""}#confirm-yes`, { type: "button" }, confirmLabel);
    const cancel = h("button.secondary#confirm-no", { type: "button" }, "Cancel");
    const dialog = h(
      "dialog.confirm#confirm-dialog",
      { "aria-labelledby": "confirm-title", "aria-describedby": "confirm-summary" },
      h("h2#confirm-title", {}, title),
      h(
        "dl.facts#confirm-summary",
        {},
        lines.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
      ),
      h("div.buttons", {}, confirm, cancel),
    );
    let answered = false;
    const finish = (yes) => {
      if (answered) return;
      answered = true;
      if (dialog.open) dialog.close();
      dialog.remove();
      if (previous && previous.isConnected && typeof previous.focus === "function") previous.focus();
      resolve(yes);
    };
    confirm.addEventListener("click", () => finish(true));
    cancel.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault(); // Escape
      finish(false);
    });
    dialog.addEventListener("close", () => finish(false));
    document.body.append(dialog);
    dialog.showModal();
    (danger ? cancel : confirm).focus();
  });
}
