"""Teacher-student methods: one module per method (``none``, ``stn``, ``l2``, ``kd``, ``hint``, ``margin``,
``lowres_kt``, ``lowres_kd``, ``lowres_ktkd``, ``adadistill``, ``ekd``), each declaring ``METHOD = registry.MethodDef(...)``; the
registry that discovers them (``registry``), the per-stage rules of Eq. 7 (``stages``), the pieces terms are
built from (``terms``; shared helpers ``_stage_terms``, ``_kd``, ``_kd_terms``; the MXNet parts of the
newer methods ``_adadistill_head``, ``_ekd_terms``; ``_cached_teacher``, the stand-in of cache-only runs), the loss blocks (``losses``)
and the generic assembler of "student forward + the method's terms" (``distill``).  It may import ``core``,
``symbols`` and ``model``; the method modules and ``registry``/``stages`` import no MXNet at module level.
"""
