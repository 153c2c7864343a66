"""Non-finite checks of NDArrays, shared by the training loop's NaN guard (loss parts, reduced
gradients, running statistics: one fused ``multi_all_finite`` and one host read per step) and the
checkpoint writer (a checkpoint with a NaN is never written).  MXNet is imported by the functions."""
import numpy as np


def arrays_all_finite(arrays):
    """True when no element of any NDArray is NaN or inf (fused ``multi_all_finite``)."""
    import mxnet as mx

    arrays = [a for a in arrays if a.dtype in (np.float16, np.float32, np.float64)]
    if not arrays:
        return True
    flag = mx.nd.ones((1,), ctx=arrays[0].context)
    by_device = {}
    for a in arrays:
        by_device.setdefault(a.context, []).append(a)
    for ctx, group in by_device.items():
        out = flag if ctx == flag.context else mx.nd.ones((1,), ctx=ctx)
        for i in range(0, len(group), 128):  # keep the variadic op's input count modest
            chunk = group[i:i + 128]
            mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=out)
        if out is not flag:
            flag = mx.nd.minimum(flag, out.as_in_context(flag.context))
    return bool(flag.asscalar())  # the one host read


def nonfinite_names(named_arrays):
    """Names of the arrays holding any NaN or inf (empty when the checkpoint is clean)."""
    if arrays_all_finite(list(named_arrays.values())):
        return []
    return sorted(k for k, v in named_arrays.items() if not arrays_all_finite([v]))
