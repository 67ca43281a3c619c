"""The central side: the operator's tools (signing, sending, watching) and what they check."""
