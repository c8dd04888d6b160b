"""The Gradio front end. Never imports torch: it talks to a pool through `backends.types`."""
