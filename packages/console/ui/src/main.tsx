import { render } from "preact";
import { createApi } from "./api.ts";
import { App } from "./app.tsx";
import { Store } from "./store.ts";
import "./styles.css";

// Same-origin API: the console server set the HttpOnly session cookie when the operator opened it.
const store = new Store({
  api: createApi(""),
  // Progress pages are coalesced to one render per animation frame.
  defer: (fn) => requestAnimationFrame(() => fn()),
});

const root = document.getElementById("app");
if (root) render(<App store={store} />, root);
