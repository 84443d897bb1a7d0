// Following one run: a single EventSource, events applied once each (by seq), and polling
// GET /v1/runs/{id} every 3 s when EventSource is missing or keeps failing, trying the stream
// again once the server answers after failing (a restarted gateway) or every 30 s.

import { eventsUrl, getRun } from "./api.js";

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
   * handlers: onEvent(type, data) for each new event, in seq order; onSnapshot(run) while
   * polling; onEnd(status) once the run has finished; onMode(mode) "sse" | "polling" | "off";
   * onGap() when a seq was skipped (the caller re-reads the run).
   */
  constructor(runId, handlers) {
    this.runId = runId;
    this.handlers = handlers;
    this.lastSeq = 0;
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
    });
    source.addEventListener("error", () => {
      if (this.source !== source || this.stopped) return;
      this.errors += 1;
      if (this.errors >= MAX_ERRORS) {
        this.closeSource();
        this.poll();
      } else if (source.readyState === EventSource.CLOSED) {
        // The browser gave up on this one (an HTTP error): try again ourselves, a bit later.
        this.closeSource();
        this.timer = setTimeout(() => this.connect(), 1000);
      }
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => this.receive(type, message));
    }
  }

  receive(type, message) {
    if (this.stopped) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    const seq = Number(data.seq ?? message.lastEventId);
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
        const run = await getRun(this.runId);
        if (this.stopped) return;
        this.handlers.onSnapshot?.(run);
        if (!ACTIVE_STATUSES.has(run.status)) {
          this.end(run.status);
          return;
        }
        if (typeof window.EventSource === "function" && (failed || Date.now() - since >= STREAM_AGAIN_MS)) {
          // Live again, from the last event applied: the stream replays what polling missed.
          this.errors = 0;
          this.connect();
          return;
        }
        if (run.status === "pending") this.kick();
      } catch (error) {
        failed = true;
        this.handlers.onError?.(error);
      }
      if (!this.stopped) this.timer = setTimeout(tick, POLL_MS);
    };
    tick();
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
