"""``--kvstore horovod`` (through ``hvd.DistributedTrainer``) and ``--kvstore dist_async`` (refused).

No horovod here: its refusal is run for real, and its wiring with a stand-in ``horovod.mxnet``
module put into ``sys.modules`` that records what the loop asks of it (init, rank/size,
``DistributedTrainer``, ``broadcast_parameters``)."""
import subprocess
import sys
import types

import mxnet as mx
import pytest
from mxnet import gluon

from shrinkteanet.core.errors import InputError
from shrinkteanet.study.tiny import train_overrides, write_tiny_set
from shrinkteanet.training import config, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("kv") / "set", with_bin=False)


def _train_cli(*args):
    return subprocess.run([sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", *args],
                          capture_output=True, text=True, timeout=120)


def test_horovod_without_horovod_and_dist_async_are_refused_in_one_line(data, tmp_path):
    assert "horovod" not in sys.modules  # not installed in this venv: the refusal is what runs
    for store, words in (("horovod", "horovod.mxnet is not importable"),
                         ("dist_async", "--kvstore dist_async: not supported: asynchronous updates")):
        r = _train_cli("--kvstore", store, "--out", str(tmp_path / store), *train_overrides(data, None))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr
        assert not (tmp_path / store).exists()  # refused before anything was written


def _fake_horovod(rank, size, local_rank, record):
    """``horovod.mxnet`` as far as the loop uses it; allreduce over one process is the identity,
    the trainer divides by ``size`` as horovod's does (``_scale *= 1/size``)."""
    hvd = types.ModuleType("horovod.mxnet")
    hvd.init = lambda: record.append(("init",))
    hvd.rank, hvd.size, hvd.local_rank = (lambda: rank), (lambda: size), (lambda: local_rank)

    class DistributedTrainer(gluon.Trainer):
        def __init__(self, params, optimizer, optimizer_params=None):
            record.append(("DistributedTrainer", sorted(params.keys()), optimizer, dict(optimizer_params)))
            super().__init__(params, optimizer, optimizer_params, kvstore=None)
            self._scale /= size

        def _allreduce_grads(self):
            record.append(("allreduce",))

    def broadcast_parameters(params, root_rank=0):
        record.append(("broadcast", sorted(params), root_rank, all(isinstance(v, mx.nd.NDArray)
                                                                   for v in params.values())))

    hvd.DistributedTrainer, hvd.broadcast_parameters = DistributedTrainer, broadcast_parameters
    pkg = types.ModuleType("horovod")
    pkg.mxnet = hvd
    return pkg, hvd


@pytest.fixture
def horovod(monkeypatch):
    def install(rank, size, local_rank=0):
        record = []
        pkg, hvd = _fake_horovod(rank, size, local_rank, record)
        monkeypatch.setitem(sys.modules, "horovod", pkg)
        monkeypatch.setitem(sys.modules, "horovod.mxnet", hvd)
        return record
    return install


def test_horovod_worker_shards_the_data_trains_through_distributed_trainer_and_writes_nothing(
        data, tmp_path, horovod, monkeypatch):
    record = horovod(rank=1, size=2)
    loaders, trainers = [], []
    make_loader = train.make_loader
    monkeypatch.setattr(train, "make_loader", lambda cfg, job: loaders.append(make_loader(cfg, job)) or loaders[-1])
    out = tmp_path / "run"
    cfg = config.config_by_name("mfnr_self", train_overrides(data, out / "model", "max_batches=3", "kvstore=horovod"))
    summary = train.train(cfg, [mx.cpu()], callbacks=[lambda info: trainers.append(info["trainer"])])
    assert (summary["rank"], summary["num_workers"], summary["steps"]) == (1, 2, 3)
    # horovod's rank and size pick the shard: half of the global batch 16, every 2nd key from key 1
    (loader,) = loaders
    assert (loader.batch_size, loader.part_index, loader.num_parts) == (8, 1, 2)
    assert record[0] == ("init",)
    kinds = [r[0] for r in record]
    assert kinds.count("DistributedTrainer") == 1 and kinds.count("broadcast") == 1 and kinds.count("allreduce") == 3
    _, names, opt, opts = record[1]
    assert opt == "sgd" and opts == {"learning_rate": cfg.lr, "momentum": cfg.momentum, "wd": cfg.wd}
    assert names == sorted(trainers[0]._params[i].name for i in range(len(trainers[0]._params)))
    broadcast = next(r for r in record if r[0] == "broadcast")
    assert broadcast[1:] == (names, 0, True)  # every trained parameter, from rank 0, as arrays
    assert kinds.index("broadcast") < kinds.index("allreduce")  # before the first step
    # gradients are sums over every process's samples divided by the global batch 16
    assert trainers[-1]._optimizer.rescale_grad == pytest.approx(1 / 16)
    assert summary["checkpoint"] is None and not out.exists()  # rank 1 writes nothing


def test_horovod_takes_one_gpu_per_process_from_the_local_rank(horovod, data):
    horovod(rank=3, size=4, local_rank=1)
    cfg = config.config_by_name("mfnr_self", train_overrides(data, None, "kvstore=horovod"))
    job = train.make_job(cfg, [mx.gpu(0), mx.gpu(1)])  # (contexts are not touched: no GPU needed)
    assert job.ctx_list == [mx.gpu(1)] and (job.rank, job.num_workers) == (3, 4) and job.distributed
    assert train.make_job(cfg, [mx.cpu()]).ctx_list == [mx.cpu()]


def test_unknown_stores_are_named():
    with pytest.raises(InputError, match="--kvstore 'nccl': expected device, local, dist_sync, dist_device_sync"):
        train.check_kvstore("nccl")


def test_resume_with_several_workers_needs_the_run_files_on_every_worker(tmp_path):
    from shrinkteanet.model import checkpoint
    from shrinkteanet.training import fit

    prefix = str(tmp_path / "model")
    job = types.SimpleNamespace(rank=1, num_workers=2)
    with pytest.raises(InputError, match=r"--resume: worker 1 of 2 \(.*\) cannot see .*model-state.json: resuming a "
                                         "multi-machine run needs --out on a folder every worker shares"):
        fit.check_resume_visible(prefix, job)
    checkpoint.write_state(prefix, {"checkpoint": 3})
    paths = checkpoint.training_paths(prefix, 3)
    for p in paths[:2]:
        open(p, "w").close()
    with pytest.raises(InputError, match=r"cannot see .*model-0003\.states"):
        fit.check_resume_visible(prefix, job)
    open(paths[2], "w").close()
    fit.check_resume_visible(prefix, job)  # all there
    fit.check_resume_visible(str(tmp_path / "elsewhere"), types.SimpleNamespace(rank=0, num_workers=1))


def test_horovod_splits_the_batch_over_processes_not_over_the_gpus_given(horovod, data):
    # 4 processes x gpu(local_rank): batch 16 splits; the 3 GPUs given to each process do not count
    horovod(rank=0, size=4, local_rank=2)
    cfg = config.config_by_name("mfnr_self", train_overrides(data, None, "kvstore=horovod"))
    assert train.make_job(cfg, [mx.gpu(0), mx.gpu(1), mx.gpu(2)]).ctx_list == [mx.gpu(2)]
    cfg.batch_size = 18
    with pytest.raises(InputError, match=r"batch_size=18 is not divisible by 4 worker\(s\) x 1 context\(s\)"):
        train.make_job(cfg, [mx.gpu(0), mx.gpu(1), mx.gpu(2)])


def test_config_and_the_recipes_dry_run_refuse_dist_async():
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "config", "mfnr_self", "kvstore=dist_async"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(
        "--kvstore dist_async: not supported: asynchronous updates run on the servers (update_on_kvstore=True), "
        "where the NaN guard cannot veto a step and Trainer.save_states cannot save the optimizer state; use "
        "dist_sync or, on GPUs, dist_device_sync"), r.stderr
