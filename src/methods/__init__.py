"""Teacher-student methods, one module per method and nothing else (``none``, ``stn``, ``l2``, ``kd``,
``hint``, ``margin``, ``lowres_kt``, ``lowres_kd``, ``lowres_ktkd``, ``adadistill``, ``ekd``), each declaring
``METHOD = base.registry.MethodDef(...)``; the registry finds every module of this folder.  The
machinery every method uses is the sub-package ``base`` (also the MXNet parts of the newer methods,
``base.adadistill_head`` and ``base.ekd_terms``, and ``base.cached_teacher``, the stand-in of cache-only
runs).  It may import ``core``, ``symbols`` and ``model``; the method modules import no MXNet at module
level.
"""
