"""The published workflows: workflows, their versions and parsed definitions, trigger
subscriptions, and who sees which."""
