// The gateway's JSON API, with the API key kept in sessionStorage (gone when the tab closes).

const KEY = "nyxflow.apiKey";

export const getKey = () => sessionStorage.getItem(KEY) || "";
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field || null;
  }

  /** "field: message", as the error is shown to the user. */
  describe() {
    return this.field ? `${this.field}: ${this.message}` : this.message;
  }
}

/** One call. `body` is sent as JSON unless `contentType` says otherwise (then as text). */
export async function api(path, { method = "GET", body, contentType, key } = {}) {
  const headers = { Authorization: `Bearer ${key ?? getKey()}`, Accept: "application/json" };
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = contentType || "application/json";
    payload = contentType ? String(body) : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, "network", `network error: ${error.message}`, null);
  }
  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(
      response.status,
      error.code || "http_error",
      error.message || response.statusText || `HTTP ${response.status}`,
      error.field,
    );
  }
  return data;
}

const id = (value) => encodeURIComponent(value);

export const listWorkflows = () => api("/v1/workflows");
export const getWorkflow = (workflowId, brief = false) =>
  api(`/v1/workflows/${id(workflowId)}${brief ? "?brief=true" : ""}`);
export const importWorkflow = (text) =>
  api("/v1/workflows/import", { method: "POST", body: text, contentType: "application/yaml" });
export const duplicateWorkflow = (workflowId) =>
  api(`/v1/workflows/${id(workflowId)}/duplicate`, { method: "POST", body: {} });
export const deleteWorkflow = (workflowId) =>
  api(`/v1/workflows/${id(workflowId)}`, { method: "DELETE" });
export const startRun = (workflowId) =>
  api(`/v1/workflows/${id(workflowId)}/runs`, { method: "POST" });
export const resumeWorkflow = (workflowId) =>
  api(`/v1/workflows/${id(workflowId)}/resume`, { method: "POST" });
export const rerunWorkflow = (workflowId) =>
  api(`/v1/workflows/${id(workflowId)}/rerun`, { method: "POST" });
export const getRun = (runId) => api(`/v1/runs/${id(runId)}`);
/** A step's items from `fromIndex` on, at most `limit`: { items, next_index (null: no more) }. */
export const listStepItems = (runId, stepId, fromIndex, limit) =>
  api(`/v1/runs/${id(runId)}/steps/${id(stepId)}/items?from_index=${fromIndex}&limit=${limit}`);
/** The run's stored events after `afterSeq`: { status, error, last_seq, events } (each event
 * as the stream's data, with its seq and type; more to be had while last_seq is beyond them). */
export const listRunEvents = (runId, afterSeq, types = []) =>
  api(`/v1/runs/${id(runId)}/events/stored?after_seq=${afterSeq}` +
    types.map((t) => `&types=${encodeURIComponent(t)}`).join(""));
/** One step whole: its output and alternatives where a run's read left them out (null). */
export const getStep = (stepId) => api(`/v1/steps/${id(stepId)}`);
export const pauseRun = (runId) => api(`/v1/runs/${id(runId)}/pause`, { method: "POST" });
export const cancelRun = (runId) => api(`/v1/runs/${id(runId)}/cancel`, { method: "POST" });
// `changes`: what to change in the step first, e.g. { max_tokens: 16384 } or { providers: ["google"] }.
export const retryStep = (stepId, cascade, changes = {}) =>
  api(`/v1/steps/${id(stepId)}/retry`, { method: "POST", body: { cascade, ...changes } });
export const selectAlternative = (stepId, index) =>
  api(`/v1/steps/${id(stepId)}/select`, { method: "POST", body: { index } });

/** A run's named artifact as text, of `stepId`'s step (without one: of the last step that
 * stored one); null when there is none (404). */
export async function getArtifactText(runId, name, stepId = "") {
  const step = stepId ? `?step_id=${encodeURIComponent(stepId)}` : "";
  const response = await fetch(`/v1/runs/${id(runId)}/artifacts/${id(name)}${step}`, {
    headers: { Authorization: `Bearer ${getKey()}` },
    cache: "no-store",
  });
  if (response.status === 404) return null;
  if (!response.ok) throw new ApiError(response.status, "http_error", `HTTP ${response.status}`, null);
  return response.text();
}

/** The events stream's URL: EventSource cannot send headers, so the key rides as a query. */
export function eventsUrl(runId, afterSeq = 0) {
  const after = afterSeq > 0 ? `&last_event_id=${afterSeq}` : "";
  return `/v1/runs/${id(runId)}/events?access_token=${encodeURIComponent(getKey())}${after}`;
}
