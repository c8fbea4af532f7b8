"""Pure builders of the objects a TieredKVCache owns: one module per child kind, no kopf, no API client."""
