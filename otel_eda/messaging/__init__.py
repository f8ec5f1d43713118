"""The transport integration API: how a transport publishes and consumes events with
otel-eda's identity, spans, metrics and lifecycle records."""
