"""Who may do what: API tokens, roles, team visibility, secrets, the audit trail."""
