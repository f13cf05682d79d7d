"""Channel adapters: one module per provider, chosen by name in the registry."""
