"""The built-in tiny VLM: its architecture, synthetic task, renderers and training command."""
