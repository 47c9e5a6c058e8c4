"""The read side (CQRS): queries behind pages, the API and the CLI, across contexts."""
