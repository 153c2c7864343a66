"""Per-stage distillation terms (ShrinkTeaNet Eq. 6/7, Duong et al. 2019), shared by the
``stn``, ``l2`` and ``hint`` method modules: adapters H_i (1x1 conv + BN, Sec. 3.3), the
teacher's frozen tails after stage i, weights ``base * lambda_i`` by stage number."""
from collections import OrderedDict

import mxnet as mx
from mxnet import gluon

from shrinkteanet.core.errors import InputError
from shrinkteanet.methods.stages import LAST_STAGE, check_stages, distill_lambdas
from shrinkteanet.methods.terms import Term


class Adapter(gluon.HybridBlock):
    """H_i of ShrinkTeaNet (Sec. 3.3, last paragraph): 1x1 convolution + BatchNorm from the
    student's stage channels to the teacher's."""

    def __init__(self, in_channels, out_channels, prefix):
        super().__init__(prefix=prefix)
        with self.name_scope():
            self.conv = gluon.nn.Conv2D(out_channels, 1, use_bias=False, in_channels=in_channels, prefix="conv_")
            self.bn = gluon.nn.BatchNorm(in_channels=out_channels, momentum=0.9, epsilon=2e-5, prefix="bn_")

    def hybrid_forward(self, F, x):
        return self.bn(self.conv(x))


class EmbeddingAdapter(gluon.HybridBlock):
    """H_n of ShrinkTeaNet (Sec. 3.3: "the dimension of F_n^s is increased to match the dimension of
    F_n^t", a 1x1 convolution followed by batch normalization) for the final stage, whose features
    are the embeddings: a student embedding (batch, D_s) seen as a 1x1 map, to the teacher's D_t."""

    def __init__(self, in_units, out_units, prefix):
        super().__init__(prefix=prefix)
        with self.name_scope():
            self.adapter = Adapter(in_units, out_units, prefix="")

    def hybrid_forward(self, F, x):
        return F.flatten(self.adapter(F.reshape(x, shape=(0, 0, 1, 1))))


def _stage_shapes(net, image_size, who):
    split = getattr(net, "split", None)
    if split is None:
        raise InputError(f"{who}: stage terms need a network built by name (shrinkteanet.symbols), not a bare symbol")
    return split.stage_shapes(image_size)


class StageTerms(Term):
    """One part per stage of ``cfg.distill_stages``: ``part_name(i)`` = ``base * lambda_i *
    distance(...)``.  With ``on_taps`` (hints, FitNets) the distance is between H_i(F_i^s) and
    the teacher's F_i^t at every stage; otherwise (Eq. 6) stage 4 compares the final embeddings
    and stage i < 4 compares ``[T_{i+1} o .. o T_n](H_i(F_i^s))`` with the teacher's embedding."""

    def __init__(self, build, *, distance, base, part_name, on_taps=False):
        super().__init__()
        self.distance = distance
        self.part_name = part_name
        self.on_taps = on_taps
        self.stages = check_stages(build.cfg)
        self.stage_weights = [float(base) * lam for lam in distill_lambdas(build.cfg)]
        self._adapters = {}
        # the teacher's frozen tails stay in ``build.frozen`` (``terms.Frozen``, outside Gluon's
        # child registry, as every teacher block): a dict of them held here made every
        # hybridize warn "StageTerms._tails is an unregistered container with Blocks"
        self._frozen = build.frozen
        if on_taps or any(s != LAST_STAGE for s in self.stages):
            self._build_adapters(build)
        if not on_taps and LAST_STAGE in self.stages:
            self._build_final_adapter(build)
        for stage, w in zip(self.stages, self.stage_weights):
            self.weights[part_name(stage)] = w

    def _build_adapters(self, build):
        from shrinkteanet.model.network import frozen_tail

        cfg = build.cfg
        if not getattr(build.student, "with_taps", False):
            raise InputError(f"distill={build.method} with distill_stages={self.stages}: the student must be built "
                             "with_taps=True")
        s_shapes = _stage_shapes(build.student, build.student_size, "student")
        t_shapes = _stage_shapes(build.teacher, build.image_size, "teacher")
        for stage in self.stages:
            if not self.on_taps and stage == LAST_STAGE:
                continue
            (cs, hs, ws), (ct, ht, wt) = s_shapes[stage - 1], t_shapes[stage - 1]
            if (hs, ws) != (ht, wt):
                raise InputError(f"distill_stages: stage {stage} is {hs}x{ws} in the student ({cfg.network}) but "
                                 f"{ht}x{wt} in the teacher ({cfg.teacher_network}); the 1x1 adapter cannot "
                                 "change spatial size")
            adapter = Adapter(cs, ct, prefix=f"adapter{stage}_")
            adapter.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=build.ctx)
            self._adapters[stage] = adapter
            self.register_child(adapter, f"adapter{stage}")
            if not self.on_taps:
                build.frozen.tails[stage] = frozen_tail(build.teacher, stage - 1)

    def _build_final_adapter(self, build):
        """``EmbeddingAdapter`` H_4 when the student's embedding is narrower or wider than the
        teacher's (Sec. 3.3); none when they match (the paper's identity case, Eq. 4/5 as is)."""
        from shrinkteanet.methods.distill import teacher_emb_size

        t_emb = teacher_emb_size(build.teacher, build.emb_size)
        if t_emb == int(build.emb_size):
            return
        adapter = EmbeddingAdapter(int(build.emb_size), t_emb, prefix=f"adapter{LAST_STAGE}_")
        adapter.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=build.ctx)
        self._adapters[LAST_STAGE] = adapter
        self.register_child(adapter, f"adapter{LAST_STAGE}")

    @property
    def adapters(self):
        return self._adapters

    def trainable_blocks(self):
        return [self._adapters[k] for k in sorted(self._adapters)]

    def forward(self, batch):
        parts = OrderedDict()
        for stage, w in zip(self.stages, self.stage_weights):
            if self.on_taps:
                value = self.distance(self._adapters[stage](batch.taps[stage - 1]), batch.t_taps[stage - 1])
            elif stage == LAST_STAGE:
                final = self._adapters.get(LAST_STAGE)
                value = self.distance(final(batch.emb) if final is not None else batch.emb, batch.t_emb)
            else:
                # float32 at the boundary: the tail's input is a float32 Variable (under AMP the
                # adapter's output is float16; the tail casts again where its graph runs fp16)
                feat = self._adapters[stage](batch.taps[stage - 1]).astype("float32", copy=False)
                # the tail is frozen in its graph (global BN statistics, no Dropout), so it is
                # recorded in the caller's mode: under predict_mode MKLDNN's BatchNorm backward
                # (the gradient to feat) ran ~100x slower for the same numbers (docs/benchmarks.md)
                value = self.distance(self._frozen.tails[stage](feat), batch.t_emb)
            parts[self.part_name(stage)] = value * w
        return parts
