"""The VideoSearcher stages and orchestrator as functions, with artifact storage and telemetry."""
