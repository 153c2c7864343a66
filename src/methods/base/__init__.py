"""The machinery of the methods (``shrinkteanet.methods``): the registry (``registry.MethodDef``,
discovery), the per-stage rules of Eq. 7 (``stage_rules``), the soft-target rules (``soft_targets``),
the low-resolution student (``low_resolution``), the teacher checks (``teacher_check``) and the stand-in
of a cache-only teacher (``cached_teacher``), the heads and loss blocks (``blocks``), the term classes
(``terms``; AdaDistill's head ``adadistill_head`` and EKD's term ``ekd_terms``, which keep state outside
the optimiser) and the assembler of "student forward + the method's terms" (``assembler.Method``).
``registry``, ``stage_rules``, ``soft_targets``, ``low_resolution``, ``teacher_check`` and
``cached_teacher`` import no MXNet at module level.
"""
