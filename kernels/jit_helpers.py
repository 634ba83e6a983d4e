"""Small Triton device functions shared by the kernels."""
import triton
import triton.language as tl


@triton.jit
def fp32(x):
    """A float argument in fp32: Triton's launcher passes Python floats as fp32, torch.compile's
    generated launchers as fp64, which would otherwise turn the kernel's arithmetic into fp64."""
    return tl.cast(x, tl.float32)
