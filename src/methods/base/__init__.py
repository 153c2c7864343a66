"""The machinery of the methods (``shrinkteanet.methods``): the registry (``registry.MethodDef``,
discovery), the per-stage rules of Eq. 7 (``stage_rules``), the soft-target rules (``soft_targets``),
the teacher checks (``teacher_check``), the heads and loss blocks (``blocks``), the term classes
(``terms``) and the assembler of "student forward + the method's terms" (``assembler.Method``).
``registry``, ``stage_rules``, ``soft_targets`` and ``teacher_check`` import no MXNet at module level.
"""
