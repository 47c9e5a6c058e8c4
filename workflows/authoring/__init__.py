"""Authoring workflows: drafts, versions, preflight and publishing."""
