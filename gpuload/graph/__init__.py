"""The TensorFlow-1-style variable store: scopes, ``get_variable``, partitioners, initializers.

* :mod:`gpuload.graph.variables`: :class:`Variable`, :class:`PartitionedVariable`,
  :class:`SaveSliceInfo`.
* :mod:`gpuload.graph.scopes`: :func:`variable_scope`, :class:`VariableScope`,
  ``AUTO_REUSE`` and :func:`device` (``tf.device``).
* :mod:`gpuload.graph.store`: the variable store, the :class:`Graph` that holds it,
  :func:`get_variable` and the store ``init_from_checkpoint`` resolves names against.
* :mod:`gpuload.graph.ops`: the initializer op (:func:`global_variables_initializer`):
  own initializers, checkpoint loads through :func:`gpuload.load`, all or nothing.
* :mod:`gpuload.graph.partition`: TensorFlow's partitioners and split rule.
* :mod:`gpuload.graph.initializers`: TensorFlow's initializers, computed on the
  variable's device.

Importing this package does not import CuPy.
"""

from gpuload.errors import UninitializedVariableError
from gpuload.graph.initializers import (
    Constant,
    GlorotNormal,
    GlorotUniform,
    Initializer,
    Ones,
    PartitionInfo,
    RandomNormal,
    RandomUniform,
    TruncatedNormal,
    VarianceScaling,
    Zeros,
    constant_initializer,
    glorot_normal_initializer,
    glorot_uniform_initializer,
    ones_initializer,
    random_normal_initializer,
    random_uniform_initializer,
    truncated_normal_initializer,
    variance_scaling_initializer,
    zeros_initializer,
)
from gpuload.graph.ops import InitOp, global_variables_initializer, variables_initializer
from gpuload.graph.partition import (
    fixed_size_partitioner,
    min_max_variable_partitioner,
    part_boxes,
    split_sizes,
    variable_axis_size_partitioner,
)
from gpuload.graph.scopes import AUTO_REUSE, VariableScope, device, get_variable_scope, variable_scope
from gpuload.graph.store import (
    Graph,
    get_default_graph,
    get_variable,
    global_variables,
    reset_default_graph,
    trainable_variables,
)
from gpuload.graph.variables import PartitionedVariable, SaveSliceInfo, Variable

__all__ = [
    "Graph",
    "get_default_graph",
    "AUTO_REUSE",
    "Constant",
    "GlorotNormal",
    "GlorotUniform",
    "InitOp",
    "Initializer",
    "Ones",
    "PartitionInfo",
    "PartitionedVariable",
    "RandomNormal",
    "RandomUniform",
    "SaveSliceInfo",
    "TruncatedNormal",
    "UninitializedVariableError",
    "Variable",
    "VariableScope",
    "VarianceScaling",
    "Zeros",
    "constant_initializer",
    "device",
    "fixed_size_partitioner",
    "get_variable",
    "get_variable_scope",
    "glorot_normal_initializer",
    "glorot_uniform_initializer",
    "global_variables",
    "global_variables_initializer",
    "min_max_variable_partitioner",
    "ones_initializer",
    "part_boxes",
    "random_normal_initializer",
    "random_uniform_initializer",
    "reset_default_graph",
    "split_sizes",
    "trainable_variables",
    "truncated_normal_initializer",
    "variable_axis_size_partitioner",
    "variable_scope",
    "variables_initializer",
    "variance_scaling_initializer",
    "zeros_initializer",
]
