"""The pure core: definitions, the engine, states and expressions. No Django, no I/O."""
