"""Model surgery: insert ECA or SE channel attention into an existing CNN (any forward torch.fx can trace)."""

from eca_serve.models.surgery.gates import SurgicalEca, SurgicalSE
from eca_serve.models.surgery.graph import apply_surgery, describe, gate_paths, with_fresh_gates
from eca_serve.models.surgery.spec import SurgerySpec, resolve_spec, select_targets

__all__ = ["SurgerySpec", "SurgicalEca", "SurgicalSE", "apply_surgery", "describe", "gate_paths",
           "resolve_spec", "select_targets", "with_fresh_gates"]
