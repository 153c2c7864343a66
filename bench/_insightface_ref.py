"""Reference loops written the way InsightFace's MXNet-era evaluation scripts are
(per threshold, per fold, per template), used as the baseline by bench_eval.py and
as an independent check by the tests.  Not imported by the library."""
import numpy as np


def old_scipy_slinear(x, y, x_new):
    """interp1d(x, y, kind='slinear') of SciPy 1.0-1.4: argsort + k=1 BSpline with
    knots [x0, x, xn-1], no duplicate check (built with SciPy's own BSpline)."""
    from scipy.interpolate import BSpline

    ind = np.argsort(x)
    xs, ys = np.asarray(x, float)[ind], np.asarray(y, float)[ind]
    t = np.r_[xs[0], xs, xs[-1]]
    return BSpline.construct_fast(t, ys, 1)(x_new)


def kfold(n, k):
    from sklearn.model_selection import KFold

    if k > 1:
        return list(KFold(n_splits=k, shuffle=False).split(np.arange(n)))
    return [(np.arange(n), np.arange(n))]


def _acc(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def _val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    ta = np.sum(np.logical_and(predict_issame, actual_issame))
    fa = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    return float(ta) / float(np.sum(actual_issame)), float(fa) / float(np.sum(np.logical_not(actual_issame)))


def loop_evaluate(embeddings, issame, nrof_folds=10):
    """Per-threshold, per-fold loops; returns the CONTRACTS fields (xnorm over the rows given)."""
    from sklearn.preprocessing import normalize

    xnorm = float(np.mean(np.linalg.norm(np.asarray(embeddings, np.float64), axis=1)))
    emb = normalize(np.asarray(embeddings, np.float64))
    issame = np.asarray(issame)
    e1, e2 = emb[0::2], emb[1::2]
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    folds = kfold(len(dist), nrof_folds)
    thresholds = np.arange(0, 4, 0.01)
    accuracy, best = np.zeros(len(folds)), np.zeros(len(folds))
    for f, (tr, te) in enumerate(folds):
        acc_train = np.zeros(len(thresholds))
        for i, th in enumerate(thresholds):
            _, _, acc_train[i] = _acc(th, dist[tr], issame[tr])
        bi = np.argmax(acc_train)
        _, _, accuracy[f] = _acc(thresholds[bi], dist[te], issame[te])
        best[f] = thresholds[bi]
    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(len(folds)), np.zeros(len(folds))
    for f, (tr, te) in enumerate(folds):
        far_train = np.zeros(len(thresholds))
        for i, th in enumerate(thresholds):
            _, far_train[i] = _val_far(th, dist[tr], issame[tr])
        if np.max(far_train) >= 1e-3:
            th = old_scipy_slinear(far_train, thresholds, 1e-3)
        else:
            th = 0.0
        val[f], far[f] = _val_far(th, dist[te], issame[te])
    return {
        "accuracy": float(np.mean(accuracy)), "accuracy_std": float(np.std(accuracy)),
        "tar": float(np.mean(val)), "tar_std": float(np.std(val)), "far": float(np.mean(far)),
        "threshold": float(np.mean(best)), "xnorm": xnorm,
    }


def loop_template_features(img_feats, templates, medias):
    """ijb_11.py image2template_feature: a loop over templates and their media."""
    from sklearn.preprocessing import normalize

    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    return normalize(template_feats), unique_templates


def loop_pair_scores(template_norm_feats, unique_templates, p1, p2, batchsize=100000):
    """ijb_11.py verification(): gathered rows, np.sum(f1 * f2, -1), in batches of 100k pairs."""
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    for i in range(0, len(p1), batchsize):
        s = total_pairs[i:i + batchsize]
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        score[s] = np.sum(feat1 * feat2, -1).flatten()
    return score


def loop_tar_at_far(label, score, x_labels=(10**-6, 10**-5, 10**-4, 10**-3, 10**-2, 10**-1)):
    """ijb_11.py's table: roc_curve, flipped, min over zip(|fpr - x|, index)."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    roc_auc = auc(fpr, tpr)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    row = {}
    for x in x_labels:
        _, min_index = min(list(zip(abs(fpr - x), range(len(fpr)))))
        row[str(float(x))] = float(tpr[min_index])
    return row, float(roc_auc)
