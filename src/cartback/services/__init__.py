"""Use cases, one transaction each: the only place where the core and the adapters meet."""
