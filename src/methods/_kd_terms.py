"""The soft-target term of Hinton et al. 2015 ("Distilling the knowledge in a neural network") on
the margin logits, for the methods that declare it through ``_kd.soft_target_terms``."""
from collections import OrderedDict

from mxnet import autograd

from shrinkteanet.methods import losses as L
from shrinkteanet.methods.terms import Term


class SoftTargets(Term):
    """``kd`` = ``kd_lambda * T^2 KL(softmax(z_t/T) || softmax(z_s/T))``; z_t from the teacher's
    embedding and its own fixed ``fc7_weight`` with the same margin as the student head.  (The
    MarginDistillation authors compare with a "margin based with T" baseline that uses hard
    labels; this is not it.)  The teacher's head goes to ``build.frozen.head``."""

    def __init__(self, build):
        super().__init__()
        cfg = build.cfg
        s, m1, m2, m3 = L.margin_params(cfg)
        self.kd = L.KDLoss(cfg.kd_temperature)
        self.weights["kd"] = float(cfg.kd_lambda)
        # the teacher's own head on the teacher's own embedding: its width may differ from the student's
        head = L.MarginHead(build.num_classes, int(build.teacher_fc7.shape[1]), s=s, m1=m1, m2=m2, m3=m3,
                            fixed=True, prefix="teacher_fc7_")
        head.initialize(ctx=build.ctx)
        head.weight.set_data(build.teacher_fc7.astype("float32"))
        build.frozen.head = head
        self._frozen = build.frozen

    def forward(self, batch):
        with autograd.pause(train_mode=False):
            t_logits = self._frozen.head(batch.t_emb, batch.label)
        return OrderedDict([("kd", self.kd(batch.logits, t_logits) * self.weights["kd"])])
