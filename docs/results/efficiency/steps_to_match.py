"""Issue 26: "steps for the self-studied student to match" for a part's rows, read off the
calibration's self-studied curves (docs/results/calibration/study.json, written by its own
run_calibration.py, so `reproduce --merge` cannot take it).  fair_report.match_table does the
reading (linear in log2(steps) between budgets); this only reshapes the calibration's runs.
Usage: python steps_to_match.py CALIBRATION_JSON PART_STUDY_JSON  (prints the markdown table)"""
import json
import sys

from shrinkteanet.study import fair_report, report_table, study_report

#: where each protocol's value sits in a calibration run (a key path into its flat record)
SOURCES = {"lfw": ("lfw",), "cfp_fp": ("cfp_fp",), "agedb_30": ("agedb_30",), "megaface": ("megaface_rank1_1k",),
           "ijbc": ("ijbc_tar_at_far", "0.0001")}


def _value(run, path):
    for key in path:
        run = run[key]
    return run


def calibration_records(calib):
    """The self-studied calibration runs as part records (network, method, steps, and each protocol's
    value under the field ``study_report.PROTOCOLS`` names, where ``study_report.metric`` reads it)."""
    recs = []
    for name, run in calib["runs"].items():
        net, method = name.split("_")[:2]
        if method != "self":
            continue
        rec = {"network": net, "method": method, "steps": run["steps"]}
        for prot, path in SOURCES.items():
            rec[prot] = {study_report.PROTOCOLS[prot][1]: _value(run, path)}
        recs.append(rec)
    return recs


def main(calib_path, part_path):
    with open(calib_path) as f:
        calib = {"runs": calibration_records(json.load(f))}
    with open(part_path) as f:
        part = json.load(f)
    part = dict(part, runs=[r for r in part["runs"] if r["method"] != "teacher"])
    rows = fair_report.match_table(calib, part)
    print("\n".join(fair_report.match_section(rows, report_table.method_names())))


if __name__ == "__main__":
    main(*sys.argv[1:3])
