"""Optional integrations with third-party libraries."""
