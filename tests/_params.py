"""Random parameters for tiny test networks, shared by the export and embed tests."""
import mxnet as mx
import numpy as np


def random_params(sym, size, seed=0, fc1_gamma=None):
    """He-scaled weights, PReLU slopes 0.25, and non-trivial BatchNorm scales and
    statistics, so that every layer matters.  ``fc1_gamma`` stores that value in the
    fix_gamma ``fc1`` BatchNorm (MXNet computes with 1 whatever is stored)."""
    rng = np.random.RandomState(seed)
    a_shapes, _, x_shapes = sym.infer_shape(data=(1, 3, size, size))
    arg, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), a_shapes):
        if name == "data":
            continue
        if name.endswith("_weight"):
            v = rng.normal(0, np.sqrt(2.0 / int(np.prod(shape[1:]))), shape)
        elif name.endswith("relu_gamma"):
            v = np.full(shape, 0.25)
        elif name.endswith("_gamma"):
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = rng.normal(0, 0.1, shape)
        arg[name] = mx.nd.array(v, dtype="float32")
    if fc1_gamma is not None:
        arg["fc1_gamma"] = mx.nd.full(arg["fc1_gamma"].shape, fc1_gamma)
    for name, shape in zip(sym.list_auxiliary_states(), x_shapes):
        v = rng.uniform(0.5, 1.5, shape) if name.endswith("var") else rng.normal(0, 0.1, shape)
        aux[name] = mx.nd.array(v, dtype="float32")
    return arg, aux
