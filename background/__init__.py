"""The background pool: jobs from the foreground, reasoners and tools, results on the bus.

Filled in by the background issue. `background` never imports `foreground`.
"""
