"""Pictures: matches side by side."""
