"""cirtutor."""
