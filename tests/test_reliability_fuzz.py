"""Issue 16: the parsers of user files and options, fuzzed with hypothesis.  Whatever the bytes,
each either parses or raises ``InputError`` with a one-line message (which the CLI prints as
``shrinkteanet: error: ...`` with exit 2, see test_reliability_mistakes.py); never another
exception, never a traceback."""
import json
import os
import pickle
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shrinkteanet.core.errors import InputError  # noqa: E402
from shrinkteanet.methods.base import stage_rules

#: examples per parser (CI: 150, about 4 s in all); SHRINKTEANET_FUZZ_EXAMPLES=5000 for a deeper run
FUZZ = settings(max_examples=int(os.environ.get("SHRINKTEANET_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# text that looks like the formats: their separators and number shapes, plus anything
_PIECES = st.sampled_from(["\t", "\n", ",", " ", "1", "0", "-1", "nan", "inf", "1e309", "0.5", "a.jpg", "../x",
                           "\x00", "\xe9", "{", "}", "[", "]", '"', ":", "path", "id", "#", "112"])
TEXTISH = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=40).map("".join)
BYTESISH = st.one_of(st.binary(max_size=300), TEXTISH.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     TEXTISH.map(lambda t: t.encode("latin-1", "replace")))


def _one_line(call, *args):
    """Run a parser: success, or an InputError whose message is one non-empty line."""
    try:
        return call(*args)
    except InputError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), repr(msg)
        return None


def _file(data, suffix):
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _with_file(data, suffix, call):
    path = _file(data, suffix)
    try:
        return _one_line(call, path)
    finally:
        os.unlink(path)


@FUZZ
@given(BYTESISH)
def test_lst_files(data):
    from shrinkteanet.data.lst import read_lst

    _with_file(data, ".lst", read_lst)


@FUZZ
@given(st.lists(st.one_of(_PIECES, st.text(max_size=6)), min_size=2, max_size=18))
def test_lst_lines_with_many_fields(fields):
    from shrinkteanet.data.lst import parse_lst_line

    _one_line(parse_lst_line, "\t".join(fields), "in.lst:1")


@FUZZ
@given(BYTESISH)
def test_bin_files(data):
    from shrinkteanet.data.binfile import read_bin_raw

    _with_file(data, ".bin", read_bin_raw)


_PLAIN = st.recursive(st.one_of(st.binary(max_size=20), st.text(max_size=10), st.booleans(), st.integers(),
                                st.none(), st.floats()),
                      lambda inner: st.one_of(st.lists(inner, max_size=5), st.tuples(inner, inner)), max_leaves=12)


@FUZZ
@given(_PLAIN, st.integers(0, 5), st.integers(0, 400), st.binary(max_size=8))
def test_bin_pickles_of_plain_values_any_protocol_and_damage(obj, protocol, cut, junk):
    """Real pickles (any protocol) of plain values, then cut and spliced."""
    from shrinkteanet.data.binfile import read_bin_raw

    data = pickle.dumps(obj, protocol=protocol)
    _with_file(data, ".bin", read_bin_raw)
    _with_file(data[:cut] + junk + data[cut:], ".bin", read_bin_raw)


@FUZZ
@given(BYTESISH)
def test_property_files(data):
    from shrinkteanet.data.recordio import read_property

    _with_file(data, "", read_property)


@pytest.fixture(scope="module")
def rec_set(tmp_path_factory):
    from shrinkteanet.study.tiny import layout_images
    from shrinkteanet.data.recordio import write_rec_set

    d = tmp_path_factory.mktemp("fuzzrec")
    write_rec_set(d, layout_images(ids=3, per=2, size=16), image_size=(16, 16), workers=1, progress=False)
    return d


@FUZZ
@given(idx=BYTESISH)
def test_idx_files(rec_set, idx):
    from shrinkteanet.data.recordio import FaceRecordDataset, RecordReader

    path = _file(idx, ".idx")
    try:
        reader = _one_line(RecordReader, str(rec_set / "train.rec"), path)
        if reader is not None:
            for key in list(reader.keys)[:20]:
                _one_line(reader.read_header, int(key))
            reader.close()
        tmp = tempfile.mkdtemp()
        for name in ("train.rec", "property"):
            os.symlink(str(rec_set / name), os.path.join(tmp, name))
        os.replace(path, os.path.join(tmp, "train.idx"))
        ds = _one_line(FaceRecordDataset, tmp)
        if ds is not None:
            for key in list(ds.all_record_ids)[:10]:
                _one_line(ds.read_key, int(key))
    finally:
        if os.path.exists(path):
            os.unlink(path)


@FUZZ
@given(BYTESISH, st.sampled_from(["read_template_media", "read_template_pairs", "read_landmarks",
                                  "read_template_subjects"]))
def test_ijb_meta_files(data, reader):
    from shrinkteanet.eval import ijb

    _with_file(data, ".txt", getattr(ijb, reader))


_JSONISH = st.recursive(st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans(), st.floats()),
                        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                st.dictionaries(st.sampled_from(["path", "id", "x"]), inner,
                                                                max_size=3)), max_leaves=10)


@FUZZ
@given(st.one_of(BYTESISH, _JSONISH.map(lambda v: json.dumps(v).encode())))
def test_megaface_lists(data):
    from shrinkteanet.eval import megaface

    _with_file(data, ".json", megaface.read_facescrub_list)
    _with_file(data, ".json", megaface.read_distractor_list)
    _with_file(data, ".txt", lambda p: megaface.read_noise_list(p, "megaface"))
    _with_file(data, ".txt", lambda p: megaface.read_noise_list(p, "facescrub"))


_KEYS = st.sampled_from(["lr", "momentum", "emb_size", "net_opts", "lr_steps", "fp16", "network", "distill",
                         "loss", "dataset", "keep_last", "val_targets", "bogus", "", " lr"])


@FUZZ
@given(st.lists(st.tuples(_KEYS, st.sampled_from(["=", "", "=="]), TEXTISH), max_size=4))
def test_key_value_overrides(items):
    from shrinkteanet.training import config
    from shrinkteanet.training.validate import check_hyperparameters

    overrides = [k + sep + v for k, sep, v in items]
    cfg = _one_line(config.config_by_name, "mfnr_stn", overrides)
    if cfg is not None:
        _one_line(check_hyperparameters, cfg)
        _one_line(stage_rules.distill_lambdas, cfg)
