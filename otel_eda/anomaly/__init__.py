"""otel-eda's anomaly engine: metric series, streaming detectors, alert rules and sinks."""
