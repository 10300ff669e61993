"""CPU weights in memory of their own, 64-byte aligned, whichever file they were read from.

Loaders keep many weights as views into the memory-mapped .safetensors file, at whatever byte offset the
file put them. On a CPU the BLAS / oneDNN kernels pick their vector code paths by the data's alignment
(Intel documents this under "Conditional Numerical Reproducibility"), so the same weights read from a
diffusers folder and from a single-file checkpoint gave images differing in the last bit. Copies made
by torch's allocator are 64-byte aligned: after this, the pixels depend on the weights' values only.
(A GPU gets fresh, aligned copies anyway when the model moves there.)
"""

from __future__ import annotations

ALIGNMENT = 64


def align_cpu_weights(*modules) -> int:
    """Copy every CPU parameter and buffer of `modules` that is not 64-byte aligned; returns how many."""
    copied = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT:
                tensor.data = tensor.data.clone()
                copied += 1
    return copied
