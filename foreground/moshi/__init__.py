"""The Moshi family (Kyutai Moshi, NVIDIA PersonaPlex) in microturn's own code.

Mimi (the streaming codec), the LM (temporal transformer + depth transformer) and their
per-session sampling, stepped every 80 ms for every live session at once on microturn's
batch-invariant kernels, loaded from a local folder in Kyutai's published layout. The `moshi`
package is the reference this code is measured against (`microturn bench parity`); nothing
here imports it.
"""
