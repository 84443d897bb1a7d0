"""The HTTP gateway: JSON API, the page, and the SSE stream of a run."""
