"""Paper II gradient dynamics: the attention routing law and EM-like optimiser schedules."""

from geoprobe.gradients.routing import (
    autograd_reference,
    em_param_groups,
    first_order_loss_change,
    routing_gradient,
    routing_law_residual,
    value_gradient,
    value_update,
)

__all__ = [
    "autograd_reference",
    "em_param_groups",
    "first_order_loss_change",
    "routing_gradient",
    "routing_law_residual",
    "value_gradient",
    "value_update",
]
