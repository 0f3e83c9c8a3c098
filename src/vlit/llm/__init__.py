"""LLM backends behind one interface, the journal, and the session that runs requests."""
