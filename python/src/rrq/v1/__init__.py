"""Generated from proto/rrq/v1 by `make gen`. Do not edit."""
