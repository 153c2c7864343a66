"""The ShrinkTeaNet paper's reported numbers (Duong et al. 2019), for reports that
put our measurements beside them.

Table 2 (verification %, LFW / CFP-FP / AgeDB-30, parameters), Table 4 (MegaFace
challenge 1 rank-1 %, 1M distractors) and Table 5 (IJB-B / IJB-C TAR at FAR=1e-4).
Tables 4 and 5 are partly garbled in the paper text we have; only values that the
paper's own prose confirms are kept (Sec. 4.3: MegaFace gains of 2.23/3.64/2.57/1.90
points for MV1/MV2/MFN/MFNR, ShrinkTeaNet-MFNR 95.64%; IJB gap of ShrinkTeaNet-MFNR
to ArcFace-MS1M 0.016 on IJB-C).  ``None`` marks a value we could not read reliably.
"""
from shrinkteanet.symbols import registry as network_registry

#: network key -> (display name, parameters in millions) from Table 2, held by the network registry
NETWORKS = network_registry.paper_table()



def paper_methods():
    """Study method key -> the paper's row name, for the teacher and every study
    row whose method module names a paper row (``StudyRow.paper``).  A fresh dict."""
    from shrinkteanet.methods.base import registry

    return {"teacher": "Teacher", **{r.key: r.paper for r in registry.study_rows() if r.paper}}


#: (network, method) -> {"lfw", "cfp_fp", "agedb_30", "megaface", "ijbc_1e-4"} as fractions
RESULTS = {
    ("r90", "teacher"): dict(lfw=0.9982, cfp_fp=0.9683, agedb_30=0.9837, megaface=None, ijbc=None),
    ("mv1", "self"): dict(lfw=0.9953, cfp_fp=0.9381, agedb_30=0.9630, megaface=0.9193, ijbc=None),
    ("mv1", "l2"): dict(lfw=0.9960, cfp_fp=0.9339, agedb_30=0.9683, megaface=None, ijbc=None),
    ("mv1", "stn"): dict(lfw=0.9963, cfp_fp=0.9423, agedb_30=0.9710, megaface=0.9416, ijbc=None),
    ("mv2", "self"): dict(lfw=0.9942, cfp_fp=0.9167, agedb_30=0.9528, megaface=0.8922, ijbc=None),
    ("mv2", "l2"): dict(lfw=0.9953, cfp_fp=0.9103, agedb_30=0.9620, megaface=None, ijbc=None),
    ("mv2", "stn"): dict(lfw=0.9963, cfp_fp=0.9329, agedb_30=0.9700, megaface=0.9286, ijbc=None),
    ("mfn", "self"): dict(lfw=0.9945, cfp_fp=0.9211, agedb_30=0.9617, megaface=0.8932, ijbc=None),
    ("mfn", "l2"): dict(lfw=0.9950, cfp_fp=0.9193, agedb_30=0.9645, megaface=None, ijbc=None),
    ("mfn", "stn"): dict(lfw=0.9960, cfp_fp=0.9344, agedb_30=0.9673, megaface=0.9189, ijbc=None),
    ("mfnr", "self"): dict(lfw=0.9960, cfp_fp=0.9380, agedb_30=0.9690, megaface=0.9374, ijbc=None),
    ("mfnr", "l2"): dict(lfw=0.9968, cfp_fp=0.9451, agedb_30=0.9748, megaface=None, ijbc=None),
    ("mfnr", "stn"): dict(lfw=0.9977, cfp_fp=0.9514, agedb_30=0.9763, megaface=0.9564, ijbc=0.940),
}


def paper_row(network, method):
    """The paper's numbers for a (network, method) row, or an empty dict."""
    return dict(RESULTS.get((network, method), {}))
