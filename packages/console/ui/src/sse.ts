/**
 * An incremental Server-Sent Events parser (WHATWG "event stream interpretation"), used instead of
 * EventSource because EventSource reconnects forever after the stream's normal end and cannot bound
 * what it buffers. Feed it decoded text in any chunking; it returns complete events only.
 */
import { UiError } from "./errors.ts";

export interface SseEvent {
  /** The `event:` field, "message" when absent. */
  readonly event: string;
  /** The `data:` lines joined by "\n". */
  readonly data: string;
  /** The last `id:` seen (it persists across events, as the spec says), or null. */
  readonly id: string | null;
}

const LINE_BREAK = /\r\n|\r|\n/g;

export class SseParser {
  readonly #maxChars: number;
  /** Text of the current, not yet terminated line. */
  #pending = "";
  /** The previous chunk ended in "\r": a leading "\n" in the next chunk belongs to that break. */
  #afterCR = false;
  #data: string[] = [];
  #dataChars = 0;
  #event = "";
  #id: string | null = null;

  /** `maxChars` bounds one event (its pending line plus its data), in UTF-16 code units. */
  constructor(maxChars: number) {
    this.#maxChars = maxChars;
  }

  feed(chunk: string): SseEvent[] {
    const out: SseEvent[] = [];
    let text = chunk;
    if (this.#afterCR && text.startsWith("\n")) text = text.slice(1);
    this.#afterCR = false;
    LINE_BREAK.lastIndex = 0;
    let start = 0;
    for (let m = LINE_BREAK.exec(text); m !== null; m = LINE_BREAK.exec(text)) {
      // A lone "\r" at the very end may be the first half of "\r\n" split across chunks.
      if (m[0] === "\r" && m.index === text.length - 1) this.#afterCR = true;
      const line = this.#pending + text.slice(start, m.index);
      this.#pending = "";
      start = m.index + m[0].length;
      const ev = this.#line(line);
      if (ev) out.push(ev);
    }
    this.#pending += text.slice(start);
    if (this.#pending.length + this.#dataChars > this.#maxChars) {
      throw new UiError(
        "UI_ERR_TOO_LARGE",
        `a progress-stream event is longer than ${this.#maxChars} characters`,
      );
    }
    return out;
  }

  #line(line: string): SseEvent | null {
    if (line === "") return this.#dispatch();
    if (line.startsWith(":")) return null; // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        this.#data.push(value);
        this.#dataChars += value.length + 1;
        if (this.#dataChars > this.#maxChars) {
          throw new UiError(
            "UI_ERR_TOO_LARGE",
            `a progress-stream event is longer than ${this.#maxChars} characters`,
          );
        }
        break;
      case "event":
        this.#event = value.slice(0, 256);
        break;
      case "id":
        if (!value.includes("\u0000")) this.#id = value.slice(0, 256);
        break;
      default:
        // "retry" and unknown fields: ignored (we never reconnect blindly).
        break;
    }
    return null;
  }

  #dispatch(): SseEvent | null {
    const had = this.#data.length > 0;
    const ev: SseEvent = { event: this.#event || "message", data: this.#data.join("\n"), id: this.#id };
    this.#data = [];
    this.#dataChars = 0;
    this.#event = "";
    // An event with no data line is not dispatched (spec), but its type is still reset.
    return had ? ev : null;
  }
}
