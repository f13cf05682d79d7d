"""Shop platform adapters: each verifies a platform's webhook signature and maps its payloads
onto the normalised events of `core.events`. Everything after that is `services.ingest`."""
