"""Installation: ``configure()``, and the distro, configurator and post-instrument hook that
``opentelemetry-instrument`` loads. The only layer that builds OpenTelemetry providers."""
