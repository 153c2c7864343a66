"""The network registry: one entry per network name, the single place a network is declared
(deliberately mirrored by the method registry, ``shrinkteanet.methods.base.registry``).

Each ``NetworkSpec`` says which family module builds the network (and with which leading
arguments), whether its argument/aux names and shapes are InsightFace's own (CONTRACTS.md:
fresnet with its default options, ``mfn`` = the ``y1`` fmobilefacenet preset), the name
reports print, the paper's name and parameter count where Table 2 of ShrinkTeaNet (Duong et
al. 2019) gives one, and the training defaults of InsightFace's per-network config (weight
decay 4e-5 for the mobile networks).  The training config table, the paper table, the
report's names and ``shrinkteanet models`` are all computed from here.

This module imports no MXNet: the config and report code read the registry without paying
for an MXNet import; the family module is imported only when a network is built.
"""
import importlib
from dataclasses import dataclass, field
from types import MappingProxyType

#: training defaults of the mobile networks (InsightFace's MobileFaceNet config: wd 4e-5)
_MOBILE_TRAINING = MappingProxyType({"emb_size": 512, "wd": 4e-5, "fc7_wd_mult": 10.0})
_MOBILE_V_TRAINING = MappingProxyType({"emb_size": 512, "wd": 4e-5})


@dataclass(frozen=True)
class NetworkSpec:
    """One registered network.

    ``family`` is the module of ``shrinkteanet.symbols`` whose ``build(*family_args,
    emb_size=..., **opts)`` returns the five pieces [stage 1..4, output unit];
    ``insightface`` is True when argument/aux names and shapes equal InsightFace's MXNet
    symbol; ``display_name`` is the name in reports; ``paper_name`` / ``paper_params_m``
    the row name and parameters (millions) of the paper's Table 2, or None;
    ``training`` the keys this network sets in the training config (``config.NETWORKS``).
    """

    name: str
    family: str
    family_args: tuple
    insightface: bool
    display_name: str
    paper_name: str | None = None
    paper_params_m: float | None = None
    training: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def build(self, emb_size, opts):
        """The family's five pieces and whether the network normalises behind ``id``.

        Parameters
        ----------
        emb_size : int
            Embedding width of ``fc1``.
        opts : dict
            Family options (``units``, ``blocks``, ``image_size``, ...); an unknown one
            raises the family's ``TypeError``.

        Returns
        -------
        (list of 5 callables Symbol -> Symbol, bool)
        """
        module = importlib.import_module(f"{__package__}.{self.family}")
        return module.build(*self.family_args, emb_size=emb_size, **opts), module.WITH_ID


def _resnet(layers, display_name, **paper):
    """LResNet-E-IR: InsightFace's fresnet with its defaults, so its names are InsightFace's."""
    return NetworkSpec(f"r{layers}", "fresnet", (layers,), True, display_name, **paper)


_SPECS = (
    _resnet(18, "LResNet18E-IR"),
    _resnet(34, "LResNet34E-IR"),
    _resnet(50, "LResNet50E-IR"),
    # the report's teacher row: the demo trains r90 at reduced widths, hence "family"
    _resnet(90, "LResNet-E-IR (r90 family)", paper_name="ResNet90", paper_params_m=63.67),
    _resnet(100, "LResNet100E-IR"),
    NetworkSpec("mfn", "fmobilefacenet", ("mfn",), True, "MobileFaceNet", paper_name="MobileFaceNet",
                paper_params_m=1.2, training=_MOBILE_TRAINING),
    NetworkSpec("mfnr", "fmobilefacenet", ("mfnr",), False, "MobileFaceNet-R", paper_name="MobileFaceNet-R",
                paper_params_m=3.73, training=_MOBILE_TRAINING),
    NetworkSpec("mv1", "fmobilenet", (), False, "MobileNetV1", paper_name="MobileNetV1", paper_params_m=3.53,
                training=_MOBILE_V_TRAINING),
    NetworkSpec("mv2", "fmobilenetv2", (), False, "MobileNetV2", paper_name="MobileNetV2", paper_params_m=2.15,
                training=_MOBILE_V_TRAINING),
)

#: network name -> NetworkSpec, in the order of CONTRACTS.md (teachers, then students)
REGISTRY = MappingProxyType({spec.name: spec for spec in _SPECS})
NETWORKS = tuple(REGISTRY)
#: networks whose argument/aux names and shapes are InsightFace's (CONTRACTS.md)
INSIGHTFACE_COMPATIBLE = tuple(name for name, spec in REGISTRY.items() if spec.insightface)
#: InsightFace's own names (its ``config.py`` network keys) that name a registered network:
#: ``y1`` is fmobilefacenet with ``net_blocks=(1, 4, 6, 2)`` and output 'GDC', i.e. ``mfn``
#: (InsightFace's y1 row also sets emb_size 128; an alias names the network only).  InsightFace's
#: ``r18 .. r100`` are the registry's names already.
ALIASES = MappingProxyType({"y1": "mfn"})
#: the registry name given to a fresnet checkpoint whose depth has no name of its own
#: (read with ``units``/``filters`` options; ShrinkTeaNet's teacher family)
DEFAULT_FRESNET = "r90"


def unknown_network_message(name):
    """One line naming ``name`` and every valid network (gluon-cv ``get_model`` style)."""
    aliases = ", ".join(f"{a}={n}" for a, n in ALIASES.items())
    return f"unknown network {name!r}; choose one of {', '.join(NETWORKS)} (InsightFace aliases: {aliases})"


def canonical_name(network):
    """The registry name of ``network`` or of its InsightFace alias (``y1`` -> ``mfn``); other
    names come back unchanged (``get_spec`` refuses them)."""
    return ALIASES.get(network, network)


def get_spec(network):
    """The ``NetworkSpec`` of ``network``.

    Parameters
    ----------
    network : str
        A registered name (``NETWORKS``) or an InsightFace alias (``ALIASES``).

    Returns
    -------
    NetworkSpec

    Raises
    ------
    ValueError
        For an unknown name; the message lists every valid one.
    """
    name = canonical_name(network)
    if name not in REGISTRY:
        raise ValueError(unknown_network_message(network))
    return REGISTRY[name]


def display_names():
    """network name -> the name reports print."""
    return {name: spec.display_name for name, spec in REGISTRY.items()}


def paper_table():
    """network name -> (Table 2 name, parameters in millions), for the networks the paper reports."""
    return {name: (spec.paper_name, spec.paper_params_m) for name, spec in REGISTRY.items() if spec.paper_name}


def training_table():
    """network name -> the training-config keys the network sets (``network`` plus its defaults)."""
    return {name: dict(network=name, **spec.training) for name, spec in REGISTRY.items()}
