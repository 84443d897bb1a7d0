// Following one run: a single EventSource, events applied once each (by seq), and polling
// the stored events after the last one applied every 3 s when EventSource is missing or keeps
// failing (only what changed: never the whole run, which carries every step's output), trying
// the stream again once the server answers after failing (a restarted gateway) or every 30 s.

import { eventsUrl, listRunEvents } from "./api.js";

export const EVENT_TYPES = [
  "run_started", "step_started", "step_delta", "step_completed", "step_failed",
  "step_truncated", "provider_fallback", "fan_out_progress", "steps_generated",
  "run_paused", "run_completed", "run_failed", "run_cancelled", "run_requeued",
  "step_retried", "workflow_resumed", "workflow_rerun",
];
export const TERMINAL_EVENTS = new Set(["run_paused", "run_completed", "run_failed", "run_cancelled"]);
export const ACTIVE_STATUSES = new Set(["pending", "running"]);

const POLL_MS = 3000;
const MAX_ERRORS = 3; // in a row, without an open in between
const STREAM_AGAIN_MS = 30000;

export class RunFollower {
  /**
   * handlers: onEvent(type, data) for each new event, in seq order; onEnd(status) once the
   * run has finished; onMode(mode) "sse" | "polling" | "off"; onGap() when a seq was skipped
   * (the caller re-reads the run); onError(error) when a read failed (the connection may be
   * lost: the stream broke off again, a poll failed); onRead() when one succeeded after all.
   */
  constructor(runId, handlers) {
    this.runId = runId;
    this.handlers = handlers;
    this.lastSeq = 0;
    this.status = "";
    this.applied = [];
    this.errors = 0;
    this.source = null;
    this.timer = null;
    this.kicked = false;
    this.mode = "off";
    this.stopped = false;
  }

  start() {
    if (typeof window.EventSource !== "function") this.poll();
    else this.connect();
  }

  setMode(mode) {
    this.mode = mode;
    this.handlers.onMode?.(mode);
  }

  connect() {
    if (this.stopped) return;
    this.setMode("sse");
    // The browser's own reconnects send Last-Event-ID; a reopened source says where it was.
    const source = new EventSource(eventsUrl(this.runId, this.lastSeq));
    this.source = source;
    source.addEventListener("open", () => {
      this.errors = 0;
      this.handlers.onRead?.();
    });
    source.addEventListener("error", () => {
      if (this.source !== source || this.stopped) return;
      this.errors += 1;
      // Once is a stream ended (its gateway went away, say); twice in a row, no gateway answers.
      if (this.errors >= 2 && source.readyState !== EventSource.CLOSED) {
        this.handlers.onError?.(new Error("the event stream broke off"));
      }
      if (source.readyState === EventSource.CLOSED) {
        this.closeSource();
        this.refused();
      } else if (this.errors >= MAX_ERRORS) {
        this.closeSource();
        this.poll();
      }
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => this.receive(type, message));
    }
  }

  /** The browser gave up on the stream: an HTTP error, or a 204 (the run has ended with
   * nothing after our last event). Not a failure in itself: the stored events say which, and
   * bring what the stream did not; only a run still active is streamed again, a bit later. */
  async refused() {
    try {
      if (await this.catchUp()) return;
    } catch (error) {
      this.handlers.onError?.(error);
    }
    if (this.stopped) return;
    if (this.errors >= MAX_ERRORS) this.poll();
    else this.timer = setTimeout(() => this.connect(), 1000);
  }

  receive(type, message) {
    if (this.stopped) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    this.apply(type, data, message.lastEventId);
  }

  apply(type, data, id) {
    const seq = Number(data.seq ?? id);
    if (!Number.isFinite(seq) || seq <= this.lastSeq) return; // a replayed event: applied already
    const gap = seq > this.lastSeq + 1;
    this.lastSeq = seq;
    this.applied.push(seq);
    this.handlers.onEvent(type, data);
    if (gap) this.handlers.onGap?.();
    if (TERMINAL_EVENTS.has(type)) this.end(data.status || type.slice(4));
  }

  poll() {
    if (this.stopped) return;
    this.setMode("polling");
    const since = Date.now();
    let failed = false;
    const tick = async () => {
      this.timer = null;
      if (this.stopped) return;
      try {
        if ((await this.catchUp()) || this.stopped) return;
        if (typeof window.EventSource === "function" && (failed || Date.now() - since >= STREAM_AGAIN_MS)) {
          // Live again, from the last event applied: the stream replays what polling missed.
          this.errors = 0;
          this.connect();
          return;
        }
        if (this.status === "pending") this.kick();
      } catch (error) {
        failed = true;
        this.handlers.onError?.(error);
      }
      if (!this.stopped) this.timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  /** Apply the stored events after the last one applied, as many reads as they take; the run's
   * status comes with them. True once the run has ended (and the follower with it). */
  async catchUp() {
    for (;;) {
      const before = this.lastSeq;
      const page = await listRunEvents(this.runId, before);
      if (this.stopped) return true;
      this.handlers.onRead?.();
      this.status = page.status;
      for (const data of page.events) if (!this.stopped) this.apply(data.type, data);
      if (this.stopped) return true; // its terminal event was among them
      // Caught up, or nothing more to be had now (read again on the next poll).
      if (this.lastSeq >= page.last_seq || this.lastSeq === before) break;
    }
    if (ACTIVE_STATUSES.has(this.status)) return false;
    this.end(this.status);
    return true;
  }

  /** A pending run starts when its events are first asked for: ask once and hang up when
   * its run_started shows it has (hanging up earlier would leave it pending). */
  async kick() {
    if (this.kicked) return;
    this.kicked = true;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 15000);
    try {
      const response = await fetch(eventsUrl(this.runId), { signal: abort.signal, cache: "no-store" });
      if (!response.ok || !response.body) return;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let text = "";
      // run_started (or an end): a run made by retry/resume/re-run has an earlier event.
      while (!this.stopped && !/^event: ?run_/m.test(text)) {
        const { done, value } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
    } catch {
      this.kicked = false; // try again on the next poll
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }

  end(status) {
    this.stop();
    this.handlers.onEnd?.(status);
  }

  closeSource() {
    if (this.source) this.source.close();
    this.source = null;
  }

  stop() {
    this.stopped = true;
    this.closeSource();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.setMode("off");
  }
}
