"""gpuload: TensorFlow checkpoints into GPU memory, fast, with TensorFlow's semantics.

The names are TensorFlow's (``tf.train`` and ``tf.compat.v1``), so a TensorFlow program
ports by changing one import::

    import gpuload as tf1

    with tf1.variable_scope("new_scope_2"):
        emb = tf1.get_variable("emb", [4194304, 64], partitioner=tf1.fixed_size_partitioner(8))
    tf1.init_from_checkpoint("/ckpts/run1", {"old_scope/emb": "new_scope_2/emb"})
    tf1.global_variables_initializer().run()   # streams the checkpoint into the GPU parts

Loading into any framework's arrays (NumPy, CuPy, PyTorch, JAX): :func:`load`
(:class:`Request`, :class:`Spec`), :func:`plan_load`. Reading checkpoints: :func:`list_variables`, :func:`load_checkpoint`,
:func:`load_variable`, :func:`latest_checkpoint`; writing them: :func:`save_checkpoint`.
Settings: :mod:`gpuload.config`. Errors: :mod:`gpuload.errors`.
"""

from gpuload import config, errors, loader
from gpuload.api import LoadResult, Request, Spec, last_load, load, plan_load
from gpuload.backend import release_pinned_memory
from gpuload.backend.placement import is_gpu_available
from gpuload.devices import Device
from gpuload.format.reader import (
    CheckpointReader,
    latest_checkpoint,
    list_variables,
    load_checkpoint,
    load_variable,
)
from gpuload.format.writer import save_checkpoint
from gpuload.graph.init_from_checkpoint import init_from_checkpoint
from gpuload.graph.initializers import (
    constant_initializer,
    glorot_uniform_initializer,
    ones_initializer,
    random_normal_initializer,
    random_uniform_initializer,
    truncated_normal_initializer,
    zeros_initializer,
)
from gpuload.graph.ops import global_variables_initializer, variables_initializer
from gpuload.graph.partition import (
    fixed_size_partitioner,
    min_max_variable_partitioner,
    variable_axis_size_partitioner,
)
from gpuload.graph.scopes import device, variable_scope
from gpuload.graph.store import (
    Graph,
    get_default_graph,
    get_variable,
    global_variables,
    reset_default_graph,
    trainable_variables,
)
from gpuload.graph.variables import PartitionedVariable, Variable
from gpuload.graph.warm_start import VocabInfo, warm_start

__version__ = "0.1.0"

__all__ = [
    "config",
    "errors",
    "loader",
    "is_gpu_available",
    "Device",
    "release_pinned_memory",
    "load",
    "plan_load",
    "last_load",
    "Request",
    "Spec",
    "LoadResult",
    "CheckpointReader",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "load_variable",
    "save_checkpoint",
    "init_from_checkpoint",
    "warm_start",
    "VocabInfo",
    "constant_initializer",
    "glorot_uniform_initializer",
    "ones_initializer",
    "random_normal_initializer",
    "random_uniform_initializer",
    "truncated_normal_initializer",
    "zeros_initializer",
    "fixed_size_partitioner",
    "min_max_variable_partitioner",
    "variable_axis_size_partitioner",
    "Graph",
    "get_default_graph",
    "PartitionedVariable",
    "Variable",
    "device",
    "get_variable",
    "global_variables",
    "global_variables_initializer",
    "reset_default_graph",
    "variable_scope",
    "variables_initializer",
    "trainable_variables",
]
