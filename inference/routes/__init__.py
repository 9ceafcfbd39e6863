"""The inference service's routers: chat completions (with SSE), feedback, admin, health and metrics."""
