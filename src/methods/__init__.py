"""Teacher-student methods, one module per method and nothing else (``none``, ``stn``, ``l2``, ``kd``,
``hint``, ``margin``, ``lowres_kt``, ``lowres_kd``, ``lowres_ktkd``), each declaring
``METHOD = base.registry.MethodDef(...)``; the registry finds every module of this folder.  The
machinery every method uses is the sub-package ``base``.  It may import ``core``, ``symbols`` and
``model``; the method modules import no MXNet at module level.
"""
