"""cilia.agent."""
