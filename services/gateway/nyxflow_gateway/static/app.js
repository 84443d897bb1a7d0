// nyxflow's page: sign in, the workflows, one workflow followed live. Hash routes:
//   #/                   the workflows
//   #/workflows/<id>     one workflow, its steps and its latest run

import * as API from "./api.js";
import { ApiError, clearKey, getKey, setKey } from "./api.js";
import { ACTIVE_STATUSES, RunFollower } from "./live.js";
import { MarkdownView, renderMarkdown } from "./markdown.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");

// --- small DOM helpers -------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Text and attributes set only when they change: no needless mutations for readers. */
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function setAttr(el, name, value) {
  if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

/** An attribute set, or removed when the value is null, only when it changes. */
function setOrDrop(el, name, value) {
  if (value === null) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else setAttr(el, name, value);
}

/** Setting `hidden`, `disabled` or `className` to what it is still counts as a change. */
function setProp(el, name, value) {
  if (el[name] !== value) el[name] = value;
}

const dot = () => h("span", { class: "dot", "aria-hidden": "true" });

function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, dot(), status);
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "—" : date.toLocaleString();
}

function duration(step) {
  if (!step.started_at) return "—";
  const end = step.finished_at ? new Date(step.finished_at) : step.status === "running" ? new Date() : null;
  if (!end) return "—";
  const ms = Math.max(0, end - new Date(step.started_at));
  return ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

const epochIso = (at) => (typeof at === "number" ? new Date(at * 1000).toISOString() : null);
const shortId = (id) => (id ? String(id).slice(0, 8) : "");

function errorLine(error) {
  if (error instanceof ApiError && error.field) {
    return [h("code", { class: "field" }, error.field), ": ", error.message];
  }
  return [error instanceof ApiError ? error.describe() : String(error?.message || error)];
}

function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  setTimeout(() => {
    region.textContent = text;
  }, 30);
}

// --- routing ------------------------------------------------------------------------------

let teardown = () => {};

function route() {
  teardown();
  teardown = () => {};
  const signedIn = Boolean(getKey());
  who.textContent = signedIn ? "Signed in" : "";
  signOut.hidden = !signedIn;
  if (!signedIn) return showSignIn();
  const match = /^#\/workflows\/([^/?#]+)$/.exec(location.hash);
  if (match) return showDetail(decodeURIComponent(match[1]));
  return showList();
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function handleAuth(error) {
  if (error instanceof ApiError && error.status === 401) {
    clearKey();
    sessionStorage.setItem("nyxflow.signInMessage", "Your API key was refused; sign in again.");
    route();
    return true;
  }
  return false;
}

function focusTitle() {
  const title = main.querySelector("h2");
  if (title) {
    title.setAttribute("tabindex", "-1");
    title.focus({ preventScroll: true });
  }
}

// --- sign in ------------------------------------------------------------------------------

function showSignIn() {
  document.title = "Sign in · nyxflow";
  const message = sessionStorage.getItem("nyxflow.signInMessage") || "";
  sessionStorage.removeItem("nyxflow.signInMessage");
  const input = h("input", {
    id: "api-key", type: "password", autocomplete: "current-password", required: true,
    spellcheck: "false", "aria-describedby": "sign-in-help",
  });
  const error = h("p", { class: "error", role: "alert", id: "sign-in-error" }, message);
  const form = h(
    "form", { class: "card sign-in", "aria-labelledby": "sign-in-title" },
    h("h2", { id: "sign-in-title" }, "Sign in"),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("p", { class: "muted", id: "sign-in-help" }, "Kept in this tab only (sessionStorage)."),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const key = input.value.trim();
    if (!key) return;
    try {
      await API.api("/v1/workflows", { key });
      setKey(key);
      go(location.hash.startsWith("#/workflows/") ? location.hash : "#/");
    } catch (e) {
      error.replaceChildren(...(e.status === 401 ? ["That API key was refused."] : errorLine(e)));
      input.focus();
    }
  });
  main.replaceChildren(form);
  input.focus();
}

// --- the workflows ------------------------------------------------------------------------

const SAMPLE = `name: Plan the release
steps:
  - name: Outline
    prompt: Outline the release as markdown headings.
    provider: local
    params: {items: 4, tokens: 40, token_delay_ms: 20}
  - name: Detail
    kind: fan_out
    source: Outline
    split: headings
    prompt: "Detail this part: {{ item }}"
    params: {tokens: 12}
`;

const LIST_MS = 3000; // how often the workflows list is read again

async function showList() {
  document.title = "Workflows · nyxflow";
  const tbody = h("tbody");
  const listError = h("p", { class: "error", role: "alert" });
  const table = h(
    "table", { class: "workflows" },
    h("caption", { class: "visually-hidden" }, "Workflows"),
    h("thead", {}, h("tr", {}, ["Name", "Status", "Last run", "Updated", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
    tbody,
  );
  const template = h("textarea", { id: "template", rows: "12", spellcheck: "false", "aria-describedby": "template-help create-error" });
  template.value = SAMPLE;
  const createError = h("p", { class: "error", role: "alert", id: "create-error" });
  const create = h("button", { type: "submit", class: "primary" }, "Create workflow");
  const form = h(
    "form", { class: "card create", "aria-labelledby": "create-title" },
    h("h3", { id: "create-title" }, "Create from a template"),
    h("label", { for: "template" }, "Template (YAML or JSON)"),
    h("p", { class: "muted", id: "template-help" }, "Paste a template; errors name the field."),
    template, h("div", { class: "row" }, create), createError,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    createError.replaceChildren();
    create.disabled = true;
    try {
      const workflow = await API.importWorkflow(template.value);
      go(`#/workflows/${encodeURIComponent(workflow.id)}`);
    } catch (e) {
      if (!handleAuth(e)) createError.replaceChildren(...errorLine(e));
    } finally {
      create.disabled = false;
    }
  });
  main.replaceChildren(
    h("section", { class: "list", "aria-labelledby": "list-title" },
      h("h2", { id: "list-title" }, "Workflows"), listError, h("div", { class: "table-wrap" }, table)),
    form,
  );
  focusTitle();

  // Runs end and workflows come and go elsewhere (another tab, the CLI): the list is read again
  // every few seconds and when the tab is back in view; a row is rebuilt only when what it shows
  // changed, and the keyboard's focus in a rebuilt row goes to the same control in the new one.
  let gone = false;
  let loading = false;
  let readFailed = false;
  let again = false; // asked for while a read was on (after a delete, say): read once more
  const shown = new Map(); // workflow id → { tr, key }
  const emptyRow = h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No workflows yet: create one below."));
  async function load() {
    if (gone) return;
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    try {
      const { workflows } = await API.listWorkflows();
      if (gone) return;
      if (readFailed) listError.replaceChildren(); // a failed read's error, not an action's
      readFailed = false;
      renderRows(workflows);
    } catch (e) {
      if (!gone && !handleAuth(e)) {
        readFailed = true;
        listError.replaceChildren(...errorLine(e));
      }
    } finally {
      loading = false;
    }
    if (again) {
      again = false;
      await load();
    }
  }

  function renderRows(workflows) {
    const here = document.activeElement;
    const focusedRow = tbody.contains(here) ? here.closest("tr") : null;
    const focusKey = focusedRow ? here.dataset.focusKey : null;
    const scroll = [window.scrollX, window.scrollY];
    const rows = workflows.map((w) => {
      const key = JSON.stringify([w.name, w.status, w.last_run_id, w.updated_at]);
      let had = shown.get(w.id);
      if (!had || had.key !== key) shown.set(w.id, (had = { tr: row(w), key }));
      return had.tr;
    });
    const ids = new Set(workflows.map((w) => w.id));
    for (const id of [...shown.keys()]) if (!ids.has(id)) shown.delete(id);
    if (!workflows.length) rows.push(emptyRow);
    // Rows moved one by one, not all replaced: a row kept keeps the focus it holds.
    rows.forEach((tr, i) => {
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    while (tbody.children.length > rows.length) tbody.lastElementChild.remove();
    if (focusedRow && document.activeElement !== here) {
      // Its row was rebuilt (the same control, enabled, in the new one) or is gone (the title).
      const same = shown.get(focusedRow.dataset.workflowId)?.tr.querySelector(`[data-focus-key="${focusKey}"]`);
      if (same && !same.disabled) same.focus({ preventScroll: true });
      else focusTitle();
      window.scrollTo(...scroll);
    }
  }

  function row(w) {
    const active = ACTIVE_STATUSES.has(w.status);
    const duplicate = h("button", { type: "button", "aria-label": `Duplicate ${w.name}`, "data-focus-key": "duplicate" }, "Duplicate");
    duplicate.addEventListener("click", async () => {
      try {
        await API.duplicateWorkflow(w.id);
        announce(`Duplicated ${w.name}`);
      } catch (e) {
        if (!handleAuth(e)) listError.replaceChildren(...errorLine(e));
      }
      await load();
    });
    const remove = h("button", { type: "button", class: "danger", disabled: active, "aria-label": `Delete ${w.name}`, "data-focus-key": "delete" }, "Delete");
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Delete the workflow “${w.name}” and all its runs?`)) return;
      try {
        await API.deleteWorkflow(w.id);
        announce(`Deleted ${w.name}`);
      } catch (e) {
        if (!handleAuth(e)) listError.replaceChildren(...errorLine(e));
      }
      await load();
    });
    return h(
      "tr", { "data-workflow-id": w.id },
      h("td", { "data-label": "Name" }, h("a", { href: `#/workflows/${encodeURIComponent(w.id)}`, "data-focus-key": "name" }, w.name)),
      h("td", { "data-label": "Status" }, statusBadge(w.status)),
      h("td", { "data-label": "Last run" }, w.last_run_id ? h("code", { title: w.last_run_id }, shortId(w.last_run_id)) : h("span", { class: "muted" }, "never")),
      h("td", { "data-label": "Updated" }, h("time", { datetime: w.updated_at || "" }, when(w.updated_at))),
      h("td", { "data-label": "Actions", class: "row-actions" }, duplicate, remove),
    );
  }

  const refresh = () => {
    if (!document.hidden) load();
  };
  const timer = setInterval(refresh, LIST_MS);
  window.addEventListener("focus", refresh);
  document.addEventListener("visibilitychange", refresh);
  teardown = () => {
    gone = true;
    clearInterval(timer);
    window.removeEventListener("focus", refresh);
    document.removeEventListener("visibilitychange", refresh);
  };
  await load();
}

// --- one workflow ---------------------------------------------------------------------------

const STEP_RANK = { pending: 0, running: 1 };
const ITEMS_PER_CALL = 500; // the most the API gives at once
const WATCH_MS = 5000; // how often a workflow shown without a run followed is read again
const STEP_AGAIN_MS = 3000; // after a failed fetch of a left-out step, when it is tried again
const rank = (status) => STEP_RANK[status] ?? 2;

function showDetail(workflowId) {
  document.title = "Workflow · nyxflow";
  const state = {
    workflow: null,
    run: null,
    steps: [],
    follower: null,
    busy: false,
    gone: false,
    missing: false, // the workflow is no more (deleted elsewhere): nothing of it is offered
    acting: false, // an action is on: act() puts the keyboard's focus back when it ends
    actionsKey: "",
    dirty: new Set(),
    frame: 0,
    notesRun: null, // the run whose fallback notes are known (followed, or read from its events)
    lostSince: null, // when a read of the followed run failed, none succeeding since
    refreshTimer: 0,
    itemsTimer: 0,
    itemsBusy: false, // a fetch of items is on: the next waits for it
    itemsAgain: false, // items were announced meanwhile
    stepsBusy: false, // a fetch of left-out steps is on: the next waits for it
    stepsAgain: false, // more steps were read without their output meanwhile
    stepsAsked: new Map(), // step id → the result (resultKey) its whole step was fetched for
    stepsTimer: 0, // a failed fetch of a left-out step tried again
  };
  const stepEls = new Map(); // step id → { details, pill, parts… }
  const drawn = new WeakMap(); // element → the key of what it shows (redraw)

  const title = h("h2", { id: "wf-title", tabindex: "-1" }, "Loading…");
  const statusEl = h("span", { id: "wf-status" });
  const runLine = h("p", { id: "run-line", class: "muted", "aria-live": "polite" });
  const connection = h("p", { id: "connection", class: "error", role: "status", hidden: true });
  const actions = h("div", { class: "actions", role: "group", "aria-label": "Workflow actions" });
  const actionError = h("p", { class: "error", role: "alert", id: "action-error" });
  const settings = h("dl", { class: "settings-list" });
  const pills = h("div", { class: "pills", role: "list", "aria-label": "Steps by status" });
  const expandAll = h("button", { type: "button" }, "Expand all");
  const collapseAll = h("button", { type: "button" }, "Collapse all");
  const stepsBox = h("div", { class: "steps", id: "steps" });
  const patchBox = h("div", { class: "patches", id: "patch", hidden: "" }); // a card a review
  const settingsBox = h("details", { class: "card settings" }, h("summary", {}, "Settings"), settings);
  const navigator = h("nav", { class: "navigator", "aria-label": "Step navigator" },
    h("div", { class: "nav-tools" }, expandAll, collapseAll), pills);
  const root = h(
    "div", { class: "detail", "data-workflow-id": workflowId, "data-live": "off" },
    h("p", { class: "back" }, h("a", { href: "#/" }, "← Workflows")),
    h("div", { class: "detail-head" }, title, statusEl),
    runLine,
    connection,
    actions,
    actionError,
    settingsBox,
    navigator,
    stepsBox,
    patchBox,
  );
  main.replaceChildren(root);

  expandAll.addEventListener("click", () => stepEls.forEach((s) => { s.details.open = true; }));
  collapseAll.addEventListener("click", () => stepEls.forEach((s) => { s.details.open = false; }));

  const ticker = setInterval(() => {
    for (const step of state.steps) if (step.status === "running") markDirty(step.id);
  }, 1000);

  // A run started elsewhere (another tab, the CLI) is followed once the brief workflow names
  // it: read every few seconds while no run is followed, and when the tab is back in view.
  let watching = false;
  async function watchForRun() {
    if (state.gone || state.follower || state.busy || watching || document.hidden || !state.workflow) return;
    watching = true;
    try {
      const w = await API.getWorkflow(workflowId, true);
      if (state.gone || state.follower || state.busy) return;
      if (w.last_run_id !== (state.run?.id ?? null) || w.status !== state.workflow.status) await reload();
    } catch (e) {
      if (!handleAuth(e) && e instanceof ApiError && e.status === 404) await reload();
    } finally {
      watching = false;
    }
  }
  const watcher = setInterval(watchForRun, WATCH_MS);
  window.addEventListener("focus", watchForRun);
  document.addEventListener("visibilitychange", watchForRun);

  function stopWatching() {
    clearInterval(ticker);
    clearInterval(watcher);
    window.removeEventListener("focus", watchForRun);
    document.removeEventListener("visibilitychange", watchForRun);
    clearTimeout(state.refreshTimer);
    clearTimeout(state.itemsTimer);
    clearTimeout(state.stepsTimer);
    cancelAnimationFrame(state.frame);
    stopFollowing();
  }
  teardown = () => {
    state.gone = true;
    stopWatching();
    window.nyxflow.detail = null;
  };
  const streamed = {};
  window.nyxflow.detail = {
    get appliedSeqs() { return state.follower ? [...state.follower.applied] : [...lastApplied]; },
    get lastSeq() { return state.follower ? state.follower.lastSeq : lastSeqSeen; },
    get mode() { return state.follower ? state.follower.mode : "off"; },
    get runId() { return state.run?.id ?? null; },
    streamed, // step id → the text its step_delta events carried in the followed run
  };
  let lastApplied = [];
  let lastSeqSeen = 0;

  // --- state changes ---------------------------------------------------------------------

  const byId = (id) => state.steps.find((s) => s.id === id);
  const active = () => Boolean(state.run && ACTIVE_STATUSES.has(state.run.status));

  /** A read of the followed run failed (true) or succeeded (false): the page says since when it
   * has had no answer, where it said "live" as if all were well. */
  function connectionLost(lost) {
    if (lost === Boolean(state.lostSince)) return;
    state.lostSince = lost ? new Date() : null;
    if (lost) {
      const at = [state.lostSince.getHours(), state.lostSince.getMinutes(), state.lostSince.getSeconds()]
        .map((n) => String(n).padStart(2, "0")).join(":");
      connection.textContent = `Connection lost; retrying since ${at}.`;
    }
    connection.hidden = !lost;
    renderHead();
  }

  function stopFollowing() {
    if (state.lostSince) connectionLost(false);
    if (state.follower) {
      lastApplied = [...state.follower.applied];
      lastSeqSeen = state.follower.lastSeq;
      state.follower.stop();
    }
    state.follower = null;
  }

  function follow(runId) {
    if (state.follower && state.follower.runId === runId && !state.follower.stopped) return;
    stopFollowing();
    const follower = new RunFollower(runId, {
      onEvent: (type, data) => applyEvent(type, data),
      onEnd: () => {
        if (state.follower === follower) stopFollowing();
        reload();
      },
      onMode: (mode) => {
        root.dataset.live = mode;
        renderHead();
      },
      onGap: () => refreshSoon(),
      onError: (e) => {
        if (handleAuth(e) || state.follower !== follower) return;
        connectionLost(true);
      },
      onRead: () => {
        if (state.follower === follower) connectionLost(false);
      },
    });
    state.follower = follower;
    state.notesRun = runId; // its events are applied from the first: its notes with them
    follower.start();
  }

  async function reload() {
    if (state.missing) return;
    try {
      // The steps' results come with the run: the workflow is read without them (a fan-out's
      // items were read twice, megabytes each), unless there is no run to bring them.
      let workflow = await API.getWorkflow(workflowId, true);
      const run = workflow.last_run_id ? await API.getRun(workflow.last_run_id) : null;
      if (!run) workflow = await API.getWorkflow(workflowId);
      if (state.gone || state.missing) return;
      state.workflow = workflow;
      const following = state.follower && run && state.follower.runId === run.id && !state.follower.stopped;
      state.run = run;
      if (following) mergeSteps(run.steps);
      else replaceSteps(run ? run.steps : workflow.steps);
      if (run && ACTIVE_STATUSES.has(run.status)) follow(run.id);
      else stopFollowing();
      if (run && !ACTIVE_STATUSES.has(run.status) && state.notesRun !== run.id) loadNotes(run.id);
      if (state.steps.some((step) => lackingRanges(step).length)) fetchItemsSoon(0); // left out
      fetchStepsSoon();
      renderHead();
    } catch (e) {
      if (state.gone || state.missing || handleAuth(e)) return;
      if (e instanceof ApiError && e.status === 404) return showMissing();
      actionError.replaceChildren(...errorLine(e));
    }
  }

  /** The workflow is gone (deleted elsewhere): what it was is no longer shown nor offered, and
   * nothing of it is read again. */
  function showMissing() {
    state.missing = true;
    stopWatching();
    const hadFocus = root.contains(document.activeElement) || document.activeElement === document.body;
    state.steps = [];
    state.dirty.clear();
    stepEls.clear();
    title.textContent = "Workflow not found";
    document.title = "Workflow not found · nyxflow";
    for (const el of [statusEl, runLine, actions, actionError, settings, pills, patchBox]) el.replaceChildren();
    for (const el of [connection, settingsBox, navigator, patchBox]) el.hidden = true;
    for (const name of ["data-status", "data-run-id", "data-run-status"]) root.removeAttribute(name);
    root.dataset.live = "off";
    stepsBox.replaceChildren(h("p", {}, "It may have been deleted. ", h("a", { href: "#/" }, "Back to the workflows")));
    if (hadFocus) title.focus({ preventScroll: true });
  }

  const NOTE_EVENTS = ["step_started", "provider_fallback"];

  /** The notes of a run not followed from its start (a finished run opened): its stored
   * provider_fallback events, read once per run, page by page, as if they had come live;
   * those and step_started only, not every delta of every step. */
  async function loadNotes(runId) {
    state.notesRun = runId;
    const notes = new Map(); // step id → its notes
    try {
      let after = 0;
      for (;;) {
        const page = await API.listRunEvents(runId, after, NOTE_EVENTS);
        if (state.gone || state.notesRun !== runId) return;
        for (const event of page.events) {
          if (event.type === "step_started") notes.delete(event.step_id); // as live: notes: []
          if (event.type === "provider_fallback") notes.set(event.step_id, [...(notes.get(event.step_id) || []), fallbackNote(event)]);
        }
        if (page.read_through <= after || page.read_through >= page.last_seq) break;
        after = page.read_through;
      }
    } catch (e) {
      if (!handleAuth(e) && state.notesRun === runId) state.notesRun = null; // the next reload tries again
      return;
    }
    if (state.run?.id !== runId) return;
    for (const step of state.steps) {
      const found = notes.get(step.id);
      if (found && JSON.stringify(found) !== JSON.stringify(step.notes || [])) {
        step.notes = found;
        markDirty(step.id);
      }
    }
  }

  function fallbackNote(data) {
    return `Fell back from ${data.from} to ${data.to}: ${data.reason}`;
  }

  /** While a run is followed, an event may arrive before or after a snapshot taken at about the
   * same time: a step never goes back (pending < running < finished) and a running step keeps
   * the text streamed so far; items and alternatives come from the API. */
  function mergeSteps(fresh) {
    const next = fresh.map((incoming) => {
      const local = byId(incoming.id);
      if (!local) return keepWhole(null, incoming);
      const items = keepLoaded(local.items, incoming.items);
      if (rank(incoming.status) > rank(local.status)) return { ...local, ...keepWhole(local, incoming), items, guessed: false };
      if (rank(incoming.status) < rank(local.status) || local.status === "running") {
        // What a guessed step lacks (its provider, persona…) comes from the snapshot.
        return { ...incoming, ...local, items: mergeItems(local.items, incoming.items), guessed: false };
      }
      return { ...local, ...keepWhole(local, incoming), items, progress: local.progress, notes: local.notes, guessed: false };
    });
    // A step generated after this snapshot was taken is kept until the next one has it.
    for (const local of state.steps) {
      if (local.guessed && !fresh.some((s) => s.id === local.id)) insertStep(next, local);
    }
    state.steps = next;
    renderSteps();
  }

  /** Insert a step that has just started where it runs: before the first step still pending. */
  function insertStep(steps, step) {
    const at = steps.findIndex((s) => s.status === "pending");
    steps.splice(at < 0 ? steps.length : at, 0, step);
  }

  function mergeItems(mine = [], theirs = []) {
    const items = new Map((mine || []).map((i) => [i.index, i]));
    for (const item of keepLoaded(mine, theirs)) items.set(item.index, item);
    return [...items.values()].sort((a, b) => a.index - b.index);
  }

  /** `theirs` (a whole run's read) with the outputs it left out (null: past the read's budget)
   * taken from `mine` where the same item was loaded already, rather than fetched again. */
  function keepLoaded(mine = [], theirs = []) {
    const loaded = new Map((mine || []).filter((i) => i.output != null).map((i) => [i.index, i]));
    return (theirs || []).map((item) => {
      const had = item.output == null ? loaded.get(item.index) : null;
      const same = had && had.heading === item.heading && had.output_tokens === item.output_tokens
        && had.served_by === item.served_by && Boolean(had.truncated) === Boolean(item.truncated);
      return same ? { ...item, output: had.output } : item;
    });
  }

  function replaceSteps(fresh) {
    state.steps = fresh.map((s) => {
      const local = byId(s.id);
      return { ...keepWhole(local, s), items: keepLoaded(local?.items, s.items), notes: local?.notes };
    });
    renderSteps();
  }

  /** What a step's output and alternatives are of: the same key, the same text. */
  const resultKey = (s) => JSON.stringify([
    s.status, s.selected_index || 0, s.input_tokens || 0, s.output_tokens || 0,
    s.served_by || null, Boolean(s.truncated), s.finish_reason || null,
  ]);

  /** `incoming` (a step as a whole read gave it) with the output and alternatives that read
   * left out (output null: past its budget) taken from `local` where the page has them whole
   * for the same result, rather than fetched again. `whole`: nothing of them is missing. */
  function keepWhole(local, incoming) {
    if (incoming.output != null) return { ...incoming, whole: true };
    if (local?.whole && local.output != null && resultKey(local) === resultKey(incoming)) {
      return { ...incoming, output: local.output, alternatives: local.alternatives || [], output_left_out: false, whole: true };
    }
    return { ...incoming, whole: false };
  }

  /** A step whose output the page shows and lacks: a running one's comes with its events, a
   * pending one has none, and a fan-out with items shows those instead. */
  const lacksOutput = (step) => step.output == null && step.status !== "running" && step.status !== "pending"
    && !(step.kind === "fan_out" && (step.items || []).length > 0);

  /** The steps a whole read left out (output null), each fetched whole once for its result
   * (stepsAsked), one at a time: a later read that leaves it out again keeps what was fetched
   * (keepWhole). A fetch that fails is tried again a little later; a step gone meanwhile (404)
   * has the workflow read again, which drops it or says the workflow is gone. */
  async function fetchStepsSoon() {
    if (state.stepsBusy) {
      state.stepsAgain = true;
      return;
    }
    clearTimeout(state.stepsTimer);
    state.stepsTimer = 0;
    const wanted = state.steps.filter((step) => lacksOutput(step) && state.stepsAsked.get(step.id) !== resultKey(step));
    if (!wanted.length || state.gone || state.missing) return;
    state.stepsBusy = true;
    let again = false;
    let gone = false;
    try {
      for (const { id: stepId } of wanted) {
        const step = byId(stepId);
        if (!step || !lacksOutput(step)) continue;
        const key = resultKey(step);
        state.stepsAsked.set(stepId, key);
        let whole;
        try {
          whole = await API.getStep(stepId);
        } catch (e) {
          if (handleAuth(e)) return;
          if (e instanceof ApiError && e.status === 404) gone = true;
          else {
            if (state.stepsAsked.get(stepId) === key) state.stepsAsked.delete(stepId);
            again = true;
          }
          continue;
        }
        if (state.gone) return;
        // The step as shown now: it may have changed meanwhile (a later read, its events).
        const shown = byId(stepId);
        if (shown && shown.output == null && resultKey(shown) === resultKey(whole)) {
          Object.assign(shown, { output: whole.output ?? "", alternatives: whole.alternatives, output_left_out: false, whole: true });
          markDirty(stepId);
        }
      }
    } finally {
      state.stepsBusy = false;
      if (state.stepsAgain) {
        state.stepsAgain = false;
        fetchStepsSoon();
      } else if (again && !state.gone) state.stepsTimer = setTimeout(fetchStepsSoon, STEP_AGAIN_MS);
    }
    if (gone && !state.gone) reload();
  }

  function refreshSoon(delay = 250) {
    if (state.refreshTimer) return;
    state.refreshTimer = setTimeout(async () => {
      state.refreshTimer = 0;
      const follower = state.follower;
      if (!follower || follower.stopped || state.gone) return;
      try {
        const run = await API.getRun(follower.runId);
        if (state.follower !== follower || follower.stopped || state.gone) return;
        state.run = { ...run, status: state.run?.status ?? run.status };
        mergeSteps(run.steps);
        if (state.steps.some((step) => lackingRanges(step).length)) fetchItemsSoon(0); // left out
        fetchStepsSoon();
        renderHead();
      } catch (e) {
        handleAuth(e);
      }
    }, delay);
  }

  /** The outputs of the items fan_out_progress announced (held meanwhile with output null),
   * and of those a whole run's read left out (past its budget, also null), fetched by index,
   * batched at most every 250 ms and one fetch at a time. The whole run, which carries every
   * item of every step (their outputs up to a budget), is read again only where it must: a gap
   * in the events, an unknown step, an announced item the API no longer has, the run's end. */
  function fetchItemsSoon(delay = 250) {
    if (state.itemsBusy) {
      state.itemsAgain = true;
      return;
    }
    if (state.itemsTimer) return;
    state.itemsTimer = setTimeout(async () => {
      state.itemsTimer = 0;
      // The followed run, else the run shown (a finished one, whose read left outputs out).
      const runId = state.follower ? state.follower.runId : state.run?.id;
      if (!runId || state.follower?.stopped || state.gone) return;
      state.itemsBusy = true;
      try {
        const wanted = state.steps.map((step) => [step.id, lackingRanges(step)]);
        for (const [stepId, ranges] of wanted) {
          for (const [from, to] of ranges) {
            if (!(await fetchItems(runId, stepId, from, to))) return;
          }
        }
        // Announced, yet not stored: the step was reset meanwhile, say. (Items announced
        // during these fetches are the next fetch's.)
        const lost = wanted.some(([stepId, ranges]) => {
          const items = byId(stepId)?.items || [];
          return ranges.some(([from, to]) => items.some((i) => i.index >= from && i.index <= to && i.output == null));
        });
        if (lost) refreshSoon();
      } catch (e) {
        if (!handleAuth(e)) refreshSoon();
      } finally {
        state.itemsBusy = false;
        if (state.itemsAgain) {
          state.itemsAgain = false;
          fetchItemsSoon();
        }
      }
    }, delay);
  }

  /** [from, to] ranges of a step's items that were announced but not loaded. An item loaded
   * between two splits their ranges, so none is fetched twice; one not announced yet may be
   * fetched with the others (the API has it, or answers without it). The items a whole read
   * left unlisted (items_left_out: past its budget) are the range after the last listed. */
  function lackingRanges(step) {
    const ranges = [];
    let range = null;
    for (const item of step.items || []) {
      if (item.output !== null && item.output !== undefined) range = null;
      else if (range) range[1] = item.index;
      else ranges.push((range = [item.index, item.index]));
    }
    if (step.items_left_out) {
      const items = step.items || [];
      const after = items.length ? items[items.length - 1].index + 1 : 0;
      if (range) range[1] = Infinity;
      else ranges.push([after, Infinity]);
    }
    return ranges;
  }

  /** Fetch and merge the items from..to, page by page; false once the run is no longer shown.
   * A page that comes after its run's end stopped the following is kept: the end's read of the
   * whole run may leave its outputs out, and would fetch them again. */
  async function fetchItems(runId, stepId, from, to) {
    let next = from;
    let step = null;
    while (next !== null && next <= to) {
      const page = await API.listStepItems(runId, stepId, next, Math.min(ITEMS_PER_CALL, to - next + 1));
      if (state.gone || (state.follower ? state.follower.runId : state.run?.id) !== runId) return false;
      step = byId(stepId);
      if (!step) return true;
      step.items = mergeItems(step.items, page.items);
      markDirty(step.id);
      next = page.next_index;
    }
    if (step && next === null && to === Infinity) step.items_left_out = 0; // every unlisted one is in
    return true;
  }

  /** Slots an announced item into `items` (sorted by index) unless it is there: found by
   * halving, since a scan and a sort per event made a fan-out of n items cost n² over its run. */
  function announceItem(items, item) {
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (items[mid].index < item.index) lo = mid + 1;
      else hi = mid;
    }
    if (items[lo]?.index !== item.index) items.splice(lo, 0, item);
  }

  function handedOver(times) {
    if (!times) return "";
    return times === 1 ? " (handed to another engine once)" : ` (handed to another engine ${times} times)`;
  }

  function applyEvent(type, data) {
    let step = data.step_id ? byId(data.step_id) : null;
    switch (type) {
      case "run_started":
        if (state.run) state.run.status = "running";
        break;
      case "step_started":
        if (data.phase && state.run) state.run.phase = data.phase;
        if (!step && data.step_id) {
          // A step generated during the run (an implementation prompt): shown at once, from
          // what its event tells, so that none of its text is lost; the snapshot completes it.
          step = { id: data.step_id, name: data.name || "", kind: data.kind || "llm", order: data.order ?? 0, guessed: true };
          insertStep(state.steps, step);
          refreshSoon(0);
        }
        if (!step) { refreshSoon(0); break; }
        // A resumed fan-out keeps the items it finished before (only the rest run again);
        // a retry's new run brings its steps without any.
        Object.assign(step, {
          status: "running", output: "", error: null, truncated: false, finish_reason: null,
          input_tokens: 0, output_tokens: 0, served_by: null, alternatives: [], items: step.items || [],
          selected_index: 0, started_at: epochIso(data.at), finished_at: null, progress: null, notes: [],
          output_left_out: false, whole: false,
        });
        streamed[step.id] = "";
        if (!stepEls.has(step.id)) renderSteps();
        break;
      case "step_delta":
        if (step && step.status === "running" && !data.alternative) {
          if (data.reset) {
            // The provider's stream broke off and is retried: what it showed is void.
            step.output = "";
            streamed[step.id] = "";
          } else {
            step.output = (step.output ?? "") + (data.text || "");
            streamed[step.id] = (streamed[step.id] || "") + (data.text || "");
          }
        }
        break;
      case "step_truncated":
        if (step) Object.assign(step, { truncated: true, finish_reason: data.reason || step.finish_reason });
        break;
      case "provider_fallback":
        if (step) step.notes = [...(step.notes || []), fallbackNote(data)];
        break;
      case "fan_out_progress":
        if (!step) { refreshSoon(0); break; }
        step.progress = { done: data.done, total: data.total, heading: data.heading || "" };
        step.items = step.items || [];
        announceItem(step.items, { index: data.index, heading: data.heading || "", output: null, truncated: Boolean(data.truncated) });
        fetchItemsSoon();
        break;
      case "step_completed":
        if (!step) { refreshSoon(0); break; }
        Object.assign(step, {
          // A long output is left out of its event, and the text streamed is whole only if
          // no event was missed: the step is read whole instead (fetchStepsSoon).
          status: "completed", output: data.output_left_out ? null : data.output ?? step.output,
          truncated: Boolean(data.truncated),
          finish_reason: data.finish_reason || null, input_tokens: data.input_tokens || 0,
          output_tokens: data.output_tokens || 0, served_by: data.served_by || null,
          finished_at: epochIso(data.at),
          // its output came with it (a fan-out's does not: its items do), its alternatives do not
          whole: data.output !== undefined && (data.alternatives || 0) <= 1,
        });
        if ((data.alternatives || 0) > 1 || step.guessed) refreshSoon(0);
        else if (data.items) fetchItemsSoon(0); // the last items' outputs, not the whole run
        else if (data.output_left_out) fetchStepsSoon();
        break;
      case "step_failed":
        if (!step) { refreshSoon(0); break; }
        Object.assign(step, { status: "failed", error: data.error || "failed", finished_at: epochIso(data.at) });
        stepEls.get(step.id)?.details.setAttribute("open", "");
        break;
      case "steps_generated":
        refreshSoon(0);
        break;
      case "run_requeued":
        // Its engine died or drained: the run waits for another, its running step pending again.
        if (state.run) {
          state.run.status = "pending";
          state.run.requeues = data.requeues || 0;
        }
        refreshSoon(0);
        break;
      case "run_paused":
      case "run_completed":
      case "run_failed":
      case "run_cancelled":
        if (state.run) {
          state.run.status = data.status || type.slice(4);
          state.run.error = data.error || null;
        }
        break;
      default:
        break; // step_retried, workflow_resumed, workflow_rerun: the snapshot has them
    }
    if (step) markDirty(step.id);
    if (type.startsWith("run_") || type === "step_started" || type === "step_completed" || type === "step_failed") {
      renderHead();
    }
  }

  // --- rendering --------------------------------------------------------------------------

  function markDirty(id) {
    state.dirty.add(id);
    if (!state.frame) state.frame = requestAnimationFrame(renderDirty);
  }

  function renderDirty() {
    cancelAnimationFrame(state.frame);
    state.frame = 0;
    const ids = [...state.dirty];
    state.dirty.clear();
    for (const stepId of ids) {
      const step = byId(stepId);
      if (step) updateStep(step);
    }
  }

  function renderHead() {
    if (state.gone || state.missing) return;
    const w = state.workflow;
    if (!w) return;
    const runStatus = state.run ? state.run.status : w.status;
    const status = state.run && state.run.id === w.last_run_id ? runStatus : w.status;
    setText(title, w.name);
    if (document.title !== `${w.name} · nyxflow`) document.title = `${w.name} · nyxflow`;
    redraw(statusEl, status, () => [statusBadge(status)]);
    setAttr(root, "data-status", status);
    setAttr(root, "data-run-id", state.run?.id ?? "");
    setAttr(root, "data-run-status", state.run?.status ?? "");
    const mode = state.follower?.mode;
    const live = state.lostSince ? " · connection lost" : mode === "sse" ? " · live" : mode === "polling" ? " · refreshing every 3 s" : "";
    const run = state.run;
    const said = run && ` ${run.status}${run.pause_requested && active() ? " (pause requested)" : ""}${handedOver(run.requeues)}${live}`;
    redraw(runLine, JSON.stringify(run && [run.id, run.phase, said, run.error]), () => [
      run
        ? h("span", {}, "Run ", h("code", { title: run.id }, shortId(run.id)), run.phase ? h("span", { class: "phase", id: "run-phase" }, ` phase ${run.phase} ·`) : "", said, run.error ? ` · ${run.error}` : "")
        : "Never run",
    ]);
    const rows = [
      ["Workflow id", w.id, true],
      ["Steps", String(state.steps.length)],
      ["Consistency check", w.consistency_check ? "yes" : "no"],
      ["If its engine dies", w.on_orphan === "resume" ? "another engine resumes the run" : "the run fails"],
      ["Created", when(w.created_at)],
      ["Updated", when(w.updated_at)],
      ["Last run", w.last_run_id || "never", Boolean(w.last_run_id)],
    ];
    redraw(settings, JSON.stringify(rows), () =>
      rows.flatMap(([k, v, code]) => [h("dt", {}, k), h("dd", {}, code ? h("code", {}, v) : v)]));
    renderActions(status);
    renderPatch();
  }

  /** The element's children built again only when what they show (its key) changed. */
  function redraw(el, key, build) {
    if (drawn.get(el) === key) return;
    drawn.set(el, key);
    el.replaceChildren(...build());
  }

  // A pipeline's patches as diff views with a download, never applied for the user: a card
  // for each review step that stored one (a workflow may review several repositories), read
  // once per completed run. A single review's card looks as it did before there could be more.
  let patchFor = "";
  const patchUrls = []; // the downloads' blob URLs, let go when the cards are replaced
  async function renderPatch() {
    const run = state.run;
    const reviews = state.steps.filter((s) => s.tool === "review_patches");
    if (!run || !reviews.length || run.status !== "completed" || patchFor === run.id) return;
    patchFor = run.id;
    const texts = await Promise.all(
      reviews.map((step) => API.getArtifactText(run.id, "patch", step.id).catch(() => null)));
    if (state.gone || state.run?.id !== run.id) return;
    const patches = reviews.map((step, i) => [step, texts[i]]).filter(([, text]) => text !== null);
    for (const url of patchUrls.splice(0)) URL.revokeObjectURL(url);
    patchBox.replaceChildren(...patches.map(([step, text]) => patchCard(run.id, step, text, reviews.length === 1)));
    patchBox.hidden = !patches.length;
  }

  /** One review step's patch; `only`: the workflow's one review, headed and named as ever. */
  function patchCard(runId, step, text, only) {
    const lines = text.split("\n").map((line) => {
      const kind = line.startsWith("+++") || line.startsWith("---") ? "file"
        : line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add"
        : line.startsWith("-") ? "del" : "ctx";
      return h("span", { class: `diff-${kind}` }, `${line}\n`);
    });
    const href = text && URL.createObjectURL(new Blob([text], { type: "text/x-diff" }));
    if (href) patchUrls.push(href);
    const download = href && h("a", {
      href,
      download: only ? `${runId}.patch` : `${runId}-${step.name.replace(/[^A-Za-z0-9._-]+/g, "-")}.patch`,
      "aria-label": only ? null : `Download patch of ${step.name}`,
    }, "Download patch");
    return h("section", { class: "card patch", "data-step-id": step.id },
      h("h3", {}, only ? "Patch" : `Patch · ${step.name}`),
      text ? h("p", {}, download, " · apply it yourself with ", h("code", {}, "git apply")) : h("p", { class: "muted" }, "No change was accepted."),
      text ? h("pre", { class: "diff", "aria-label": only ? "Combined patch" : `Patch of ${step.name}` }, ...lines) : "",
    );
  }

  function renderActions(status) {
    const isActive = active();
    const wanted = [];
    if (!isActive && status === "idle") wanted.push(["Start", "primary", () => API.startRun(workflowId)]);
    if (isActive && !state.run.pause_requested) wanted.push(["Pause", "", () => API.pauseRun(state.run.id)]);
    if (isActive) wanted.push(["Cancel", "danger", () => API.cancelRun(state.run.id), "Cancel this run? The running step stops now."]);
    if (!isActive && ["paused", "failed", "cancelled"].includes(status)) wanted.push(["Resume", "primary", () => API.resumeWorkflow(workflowId)]);
    if (!isActive && status !== "idle") wanted.push(["Re-run", "", () => API.rerunWorkflow(workflowId), "Re-run every step? All outputs are discarded."]);
    wanted.push(["Duplicate", "", async () => {
      const copy = await API.duplicateWorkflow(workflowId);
      go(`#/workflows/${encodeURIComponent(copy.id)}`);
    }]);
    if (!isActive) wanted.push(["Delete", "danger", async () => {
      await API.deleteWorkflow(workflowId);
      go("#/");
    }, "Delete this workflow and all its runs?"]);
    // Busy only disables the buttons: rebuilding them would drop the keyboard's focus.
    const key = wanted.map((w) => w[0]).join("|");
    if (key !== state.actionsKey) {
      state.actionsKey = key;
      const focused = actions.contains(document.activeElement) ? document.activeElement.textContent : null;
      actions.replaceChildren(
        ...wanted.map(([label, cls, run, confirmText]) => {
          const button = h("button", { type: "button", class: cls || null }, label);
          button.addEventListener("click", () => act(run, confirmText));
          return button;
        }),
      );
      if (focused !== null) focusAction(focused);
    }
    for (const button of actions.children) setProp(button, "disabled", state.busy);
    // A step's buttons and alternatives depend on whether a run is on and the page busy: the
    // steps are drawn again when that changes, not at every event.
    const stepsKey = `${isActive}/${state.busy}`;
    if (state.stepsKey !== stepsKey) {
      state.stepsKey = stepsKey;
      for (const step of state.steps) markDirty(step.id);
    }
  }

  /** Focus the action of that label, or the first one when it is gone (Start becomes Pause). */
  function focusAction(label) {
    const buttons = [...actions.children].filter((b) => !b.disabled);
    const target = buttons.find((b) => b.textContent === label) || buttons[0];
    if (target) target.focus();
    else {
      actions.setAttribute("tabindex", "-1");
      actions.focus();
    }
  }

  async function act(run, confirmText) {
    if (state.busy) return;
    if (confirmText && !window.confirm(confirmText)) return;
    // The pressed button may be disabled or gone meanwhile: focus goes back to the actions.
    const pressed = document.activeElement;
    const label = actions.contains(pressed) || stepsBox.contains(pressed) ? pressed.textContent : null;
    state.busy = true;
    state.acting = true;
    actionError.replaceChildren();
    renderHead();
    try {
      await run();
    } catch (e) {
      if (handleAuth(e)) return;
      actionError.replaceChildren(...errorLine(e));
    } finally {
      state.busy = false;
    }
    if (!state.gone) await reload(); // the API's answer wins
    renderHead();
    if (label === null || state.gone || state.missing) {
      state.acting = false;
      return;
    }
    renderDirty(); // now, not next frame: a step's buttons may go once its run is on
    state.acting = false;
    const here = document.activeElement;
    if (!root.contains(here) || here.disabled) {
      if (pressed.isConnected && !pressed.disabled) pressed.focus();
      else focusAction(label);
    }
  }

  function renderSteps() {
    if (state.gone || state.missing) return;
    const seen = new Set();
    state.steps.forEach((step, position) => {
      seen.add(step.id);
      let parts = stepEls.get(step.id);
      if (!parts) {
        parts = createStep(step);
        stepEls.set(step.id, parts);
      }
      if (stepsBox.children[position] !== parts.details) stepsBox.insertBefore(parts.details, stepsBox.children[position] || null);
      if (pills.children[position] !== parts.pillItem) pills.insertBefore(parts.pillItem, pills.children[position] || null);
      updateStep(step); // each part compares what it shows with the step's new state
    });
    for (const [id, parts] of stepEls) {
      if (!seen.has(id)) {
        parts.details.remove();
        parts.pillItem.remove();
        stepEls.delete(id);
      }
    }
  }

  function createStep(step) {
    const pill = h("a", { class: "pill", href: `#step-${step.id}`, "data-step-id": step.id },
      dot(), h("span", { class: "pill-label" }), h("span", { class: "visually-hidden pill-status" }));
    pill.addEventListener("click", (event) => {
      event.preventDefault(); // the hash is the route; scroll without touching it
      const parts = stepEls.get(step.id);
      if (!parts) return;
      parts.details.open = true;
      const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      parts.details.scrollIntoView({ behavior: reduce ? "auto" : "smooth", block: "start" });
      parts.summary.focus({ preventScroll: true });
    });
    const pillItem = h("div", { role: "listitem", class: "pill-item" }, pill);
    const summary = h("summary", {},
      dot(), h("span", { class: "step-title" }), h("span", { class: "step-status badge" }),
      h("span", { class: "step-kind muted" }), h("span", { class: "badge truncated", hidden: true }, "truncated"));
    const meta = h("dl", { class: "meta" });
    const notes = h("ul", { class: "notes", hidden: true });
    const error = h("div", { class: "step-error error", role: "alert", hidden: true });
    const fanout = h("div", { class: "fanout", hidden: true });
    const output = h("div", { class: "output markdown", "aria-label": "Output" });
    const alternatives = h("div", { class: "alternatives", hidden: true });
    const stepActions = h("div", { class: "step-actions", role: "group", "aria-label": "Step actions" });
    const details = h("details", { class: "step", id: `step-${step.id}`, "data-step-id": step.id },
      summary, h("div", { class: "step-body" }, meta, notes, error, fanout, output, alternatives, stepActions));
    const view = new MarkdownView(output);
    return { details, summary, pill, pillItem, meta, notes, error, fanout, output, view, alternatives, stepActions, rendered: {}, tab: null };
  }

  function updateStep(step) {
    const parts = stepEls.get(step.id);
    if (!parts) return;
    const r = parts.rendered;
    const label = `${step.order + 1}. ${step.name}`;
    const status = step.status;
    // Only what changed is written: an event of one step leaves the other steps' DOM alone.
    for (const el of [parts.details, parts.pill]) {
      setAttr(el, "data-status", status);
      setProp(el, "className", `${el === parts.pill ? "pill" : "step"} status-${status}`);
    }
    setOrDrop(parts.pill, "aria-current", status === "running" ? "step" : null);
    setAttr(parts.pill, "title", `${label} (${status})`);
    setText(parts.pill.querySelector(".pill-label"), label);
    setText(parts.pill.querySelector(".pill-status"), `: ${status}`);
    if (status === "running" && r.status !== "running") revealPill(parts.pill);
    r.status = status;
    setText(parts.summary.querySelector(".step-title"), label);
    const statusBox = parts.summary.querySelector(".step-status");
    setText(statusBox, status);
    setProp(statusBox, "className", `step-status badge status-${status}`);
    setText(parts.summary.querySelector(".step-kind"), step.kind);
    const badge = parts.summary.querySelector(".truncated");
    setProp(badge, "hidden", !step.truncated);
    setAttr(badge, "title", windowFull(step)
      ? "the model's context window is full: a larger limit will not help; shorten the prompt or use a model with a larger window"
      : "stopped at the step's max_tokens");

    const provider = [step.provider, step.model].filter(Boolean).join(":");
    const served = step.served_by || (provider ? `${provider} (configured)` : "—");
    const rows = [
      ["Status", status],
      ["Persona", step.persona || "—"],
      ["Served by", served],
      ["Tokens in / out", `${step.input_tokens || 0} / ${step.output_tokens || 0}`],
      ["Duration", duration(step)],
    ];
    const finish = windowFull(step) ? "context window full" : step.finish_reason;
    if (step.finish_reason) rows.push(["Finish", finish + (step.truncated ? " (truncated)" : "")]);
    const metaKey = JSON.stringify(rows);
    if (r.meta !== metaKey) {
      r.meta = metaKey;
      parts.meta.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    }

    const notes = step.notes || [];
    setProp(parts.notes, "hidden", !notes.length);
    const notesKey = JSON.stringify(notes);
    if (r.notes !== notesKey) {
      r.notes = notesKey;
      parts.notes.replaceChildren(...notes.map((n) => h("li", {}, n)));
    }

    setProp(parts.error, "hidden", !step.error || status === "completed");
    if (r.error !== step.error) {
      r.error = step.error;
      parts.error.replaceChildren(h("strong", {}, "Error: "), step.error || "");
    }

    renderFanout(step, parts);

    // A delta costs what it adds: the finished blocks of the text stay as they were rendered.
    const output = step.output || "";
    const shown = output ? `${status !== "running"}` : status === "running" ? "Waiting for output…"
      : lacksOutput(step) ? "Done; loading the output…" : "No output yet.";
    if (r.output !== output || r.shown !== shown) {
      r.output = output;
      r.shown = shown;
      if (output) parts.view.show(output, status !== "running");
      else {
        parts.view.clear();
        parts.output.replaceChildren(h("p", { class: "muted" }, shown));
      }
    }
    setAttr(parts.output, "aria-busy", String(status === "running"));
    setProp(parts.output, "hidden", step.kind === "fan_out" && (step.items || []).length > 0); // = the items

    renderAlternatives(step, parts);
    renderStepActions(step, parts);
  }

  function revealPill(pill) {
    const row = pills;
    const left = pill.offsetLeft - row.offsetLeft;
    if (left < row.scrollLeft || left + pill.offsetWidth > row.scrollLeft + row.clientWidth) {
      row.scrollTo({ left: Math.max(0, left - row.clientWidth / 3), behavior: "smooth" });
    }
  }

  /** The items are kept by their index: an item is rendered again only when its own heading,
   * output or mark changed and new ones are slotted in by index, so a fan-out of many items
   * renders each item's markdown once or twice, and the item being read (its text selected,
   * say) stays as it is while the others arrive. */
  function renderFanout(step, parts) {
    const items = step.items || [];
    const progress = step.progress
      || (items.length ? { done: items.length, total: step.status === "completed" ? items.length : null, heading: items[items.length - 1].heading } : null);
    const isFanout = step.kind === "fan_out";
    setProp(parts.fanout, "hidden", !isFanout || (!progress && !items.length));
    if (parts.fanout.hidden) {
      // A step reset (retried, or its source's other alternative chosen) keeps no old item.
      parts.fan?.shown.clear();
      parts.fan?.list.replaceChildren();
      return;
    }
    const fan = parts.fan || (parts.fan = createFanout(parts.fanout));

    const done = progress?.done ?? items.length;
    const total = progress?.total ?? "?";
    setAttr(fan.bar, "max", String(typeof total === "number" ? total : done || 1));
    setAttr(fan.bar, "value", String(done));
    setAttr(fan.bar, "aria-label", `Items done of ${total}`);
    setText(fan.count, `${done}/${total}`);
    const heading = progress?.heading || "";
    setProp(fan.heading, "hidden", !heading);
    setText(fan.heading, heading);
    setAttr(fan.heading, "title", heading);

    const wanted = new Set(items.map((item) => item.index));
    for (const [index, shown] of fan.shown) {
      if (!wanted.has(index)) {
        shown.li.remove();
        fan.shown.delete(index);
      }
    }
    let previous = null;
    for (const item of items) {
      let shown = fan.shown.get(item.index);
      if (!shown) {
        shown = { li: h("li", { class: "item", "data-index": String(item.index) }) };
        fan.shown.set(item.index, shown);
      }
      const truncated = Boolean(item.truncated);
      const output = item.output ?? null;
      if (shown.heading !== item.heading || shown.output !== output || shown.truncated !== truncated) {
        Object.assign(shown, { heading: item.heading, output, truncated });
        renderItem(shown.li, item);
      }
      const next = previous ? previous.nextElementSibling : fan.list.firstElementChild;
      if (next !== shown.li) fan.list.insertBefore(shown.li, next);
      previous = shown.li;
    }
  }

  function createFanout(box) {
    const fan = {
      bar: h("progress", {}),
      count: h("span", { class: "fanout-count" }),
      heading: h("span", { class: "fanout-heading muted", hidden: true }),
      list: h("ol", { class: "items" }),
      shown: new Map(), // item index → { li, and the heading, output and mark it shows }
    };
    box.replaceChildren(
      h("div", { class: "fanout-head" }, h("span", { class: "fanout-label" }, "Items"), fan.bar, fan.count, fan.heading),
      fan.list);
    return fan;
  }

  function renderItem(li, item) {
    const body = h("div", { class: "markdown item-output" });
    if (item.output === null || item.output === undefined) body.append(h("p", { class: "muted" }, "Done; loading…"));
    else body.innerHTML = renderMarkdown(item.output);
    li.replaceChildren(
      h("div", { class: "item-heading" }, item.heading || `Item ${item.index + 1}`,
        item.truncated ? h("span", { class: "badge truncated", title: "stopped at the step's max_tokens" }, "truncated") : null),
      body);
  }

  function renderAlternatives(step, parts) {
    const alts = step.alternatives || [];
    setProp(parts.alternatives, "hidden", alts.length < 2);
    if (alts.length < 2) {
      if (parts.alternatives.contains(document.activeElement)) keepFocus(parts); // hidden: lost
      return;
    }
    if (parts.tab === null || parts.tab >= alts.length) parts.tab = step.selected_index || 0;
    const canSelect = !active() && step.status === "completed" && !state.busy;
    const shown = alts.map((a) => [a.output, a.served_by, a.input_tokens, a.output_tokens, a.truncated]);
    const key = JSON.stringify([shown, step.selected_index, parts.tab, canSelect]);
    if (parts.rendered.alts === key) return;
    parts.rendered.alts = key;
    const hadFocus = parts.alternatives.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    const base = `alt-${step.id}`;
    const tabs = alts.map((alt, i) => {
      const selected = i === step.selected_index;
      const tab = h("button", {
        type: "button", role: "tab", id: `${base}-tab-${i}`, "aria-controls": `${base}-panel-${i}`,
        "aria-selected": String(i === parts.tab), tabindex: i === parts.tab ? "0" : "-1",
        class: selected ? "tab chosen" : "tab", "data-focus-key": `tab-${i}`,
      }, `Alternative ${i + 1}`, selected ? h("span", { class: "chosen-mark" }, " ✓ in use") : null);
      tab.addEventListener("click", () => {
        parts.tab = i;
        updateStep(step);
      });
      tab.addEventListener("keydown", (event) => {
        const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -i, End: alts.length - 1 - i };
        if (!(event.key in moves)) return;
        event.preventDefault();
        parts.tab = (i + moves[event.key] + alts.length) % alts.length;
        updateStep(step);
        parts.alternatives.querySelector(`[data-focus-key="tab-${parts.tab}"]`)?.focus();
      });
      return tab;
    });
    const alt = alts[parts.tab];
    const chosen = parts.tab === step.selected_index;
    const use = h("button", { type: "button", class: "primary", disabled: !canSelect, "data-focus-key": "use" }, "Use this one");
    use.addEventListener("click", () => act(() => API.selectAlternative(step.id, parts.tab)));
    const panel = h("div", { role: "tabpanel", id: `${base}-panel-${parts.tab}`, "aria-labelledby": `${base}-tab-${parts.tab}`, class: "tabpanel", tabindex: "0" },
      h("p", { class: "muted alt-meta" }, `${alt.served_by || "—"} · ${alt.input_tokens} in / ${alt.output_tokens} out${alt.truncated ? " · truncated" : ""}`),
      h("div", { class: "markdown alt-output" }),
      chosen ? h("p", { class: "muted" }, "This alternative is the step's output.") : use);
    panel.querySelector(".alt-output").innerHTML = renderMarkdown(alt.output);
    parts.alternatives.replaceChildren(
      h("h4", { class: "alts-title" }, `Alternatives (${alts.length})`),
      h("div", { role: "tablist", "aria-label": `Alternatives of ${step.name}`, class: "tabs" }, tabs),
      panel,
    );
    if (hadFocus) {
      const same = parts.alternatives.querySelector(`[data-focus-key="${hadFocus}"]`);
      if (same && !same.disabled) same.focus();
      else keepFocus(parts);
    }
  }

  /** The focused control of a step went or was disabled by a render (a run started elsewhere):
   * the focus goes to the step's summary rather than to the page. During an action act() puts
   * it back where the action was pressed. */
  function keepFocus(parts) {
    if (state.acting) return;
    const here = document.activeElement;
    if (here && here !== document.body && here.isConnected && !here.disabled && !here.closest("[hidden]")) return;
    parts.summary.focus({ preventScroll: true });
  }

  function windowFull(step) {
    return step.finish_reason === "context_window";
  }

  function renderStepActions(step, parts) {
    const allowed = !active() && step.status !== "pending";
    // Twice the tokens would meet the same full context window again.
    const raised = step.truncated && step.max_tokens && !windowFull(step) ? step.max_tokens * 2 : 0;
    const key = `${allowed}/${raised}`;
    const focused = parts.stepActions.contains(document.activeElement) ? document.activeElement.textContent : null;
    if (parts.rendered.actions !== key) {
      parts.rendered.actions = key;
      parts.stepActions.replaceChildren(...(allowed ? stepButtons(step, raised) : []));
    }
    for (const button of parts.stepActions.children) setProp(button, "disabled", state.busy);
    if (focused !== null && !parts.stepActions.contains(document.activeElement)) {
      const same = [...parts.stepActions.children].find((b) => b.textContent === focused && !b.disabled);
      if (same) same.focus();
      else keepFocus(parts);
    } else if (focused !== null) keepFocus(parts); // still there, yet disabled
  }

  function stepButtons(step, raised) {
    const retry = h("button", { type: "button" }, "Retry step");
    retry.addEventListener("click", () => {
      const now = byId(step.id) || step;
      act(() => API.retryStep(step.id, false),
        now.status === "completed" ? `Retry “${now.name}”? Its output is discarded.` : null);
    });
    const cascade = h("button", { type: "button", class: "danger" }, "Retry from here");
    cascade.addEventListener("click", () =>
      act(() => API.retryStep(step.id, true), `Retry “${step.name}” and every step after it? Their outputs are discarded.`));
    const buttons = [retry, cascade];
    if (raised) {
      // The output stopped at its limit: retrying at the same limit would stop there again.
      const more = h("button", { type: "button" }, `Retry with ${raised.toLocaleString("en")} tokens`);
      more.addEventListener("click", () =>
        act(() => API.retryStep(step.id, false, { max_tokens: raised }),
          `Retry “${step.name}” with max_tokens ${raised}? Its output is discarded.`));
      buttons.splice(1, 0, more);
    }
    return buttons;
  }

  reload().then(() => {
    if (!state.gone && document.activeElement === document.body) title.focus({ preventScroll: true });
  });
  title.focus({ preventScroll: true });
}

// --- start --------------------------------------------------------------------------------

window.nyxflow = { detail: null };
signOut.addEventListener("click", () => {
  clearKey();
  go("#/");
});
window.addEventListener("hashchange", route);
route();
