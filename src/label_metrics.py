"""Scores of a model's codes against the labels: clustering ACC, NMI and ARI, and the few-label
accuracies (docs/MATH.md, "Evaluation"). numpy, scipy and scikit-learn only: no torch.
"""

from __future__ import annotations

import numpy as np

from src.contract import FEWLABEL_N

# --- clustering -------------------------------------------------------------------------------


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray, n_components: int | None = None) -> tuple[float, str]:
    """Accuracy of a clustering against labels, and the mapping used.

    With at most as many mixture components as classes, clusters are matched one-to-one to classes
    with the Hungarian algorithm. With more components than classes (n_components, or else the number
    of clusters used) each cluster maps to its majority class: the many-to-one protocol used for
    over-clustering (e.g. GMVAE with 30 clusters).
    """
    from scipy.optimize import linear_sum_assignment

    _, y = np.unique(np.asarray(labels), return_inverse=True)
    _, c = np.unique(np.asarray(clusters), return_inverse=True)
    counts = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(counts, (c, y), 1)
    n_classes = counts.shape[1]
    if (n_components if n_components is not None else counts.shape[0]) > n_classes:
        return float(counts.max(axis=1).sum() / len(y)), "many_to_one"
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y)), "hungarian"


def clustering_metrics(labels: np.ndarray, clusters: np.ndarray, n_components: int | None = None) -> dict:
    """ACC (with its mapping), NMI and ARI of component assignments against labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    acc, mapping = cluster_accuracy(labels, clusters, n_components)
    return {
        "acc": acc,
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "acc_mapping": mapping,
        "n_clusters_used": int(len(np.unique(clusters))),
    }


# --- few labels (Kingma et al. 2014, M1) -----------------------------------------------------


def fewlabel_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray | None:
    """Indices of n training points per class, fixed by seed; None when a class has fewer than n, or
    when there is only one class (nothing to tell apart).

    One seeded permutation per class, of which the first n are taken: the subsets for growing n are
    nested, and they do not depend on the model, so runs compare on the same labelled points.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < n:
            return None
        picked.append(members[:n])
    return np.sort(np.concatenate(picked))


def fewlabel_logistic_accuracy(
    train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, test_labels: np.ndarray
) -> float:
    """Test accuracy of a logistic regression (standardised features) fitted on the labelled points."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train_feats, train_labels)
    return float(clf.score(test_feats, test_labels))


def fewlabel_component_accuracy(
    train_comps: np.ndarray, train_labels: np.ndarray, test_comps: np.ndarray, test_labels: np.ndarray
) -> float:
    """Test accuracy when each mixture component predicts the majority label of the labelled points it
    receives; a component that receives none predicts the labelled points' overall majority."""
    train_labels = np.asarray(train_labels)

    def majority(y: np.ndarray) -> int:
        values, counts = np.unique(y, return_counts=True)
        return int(values[np.argmax(counts)])  # ties: the smallest label

    fallback = majority(train_labels)
    label_of = {int(k): majority(train_labels[train_comps == k]) for k in np.unique(train_comps)}
    predicted = np.array([label_of.get(int(k), fallback) for k in np.asarray(test_comps)])
    return float(np.mean(predicted == np.asarray(test_labels)))


def fewlabel_metrics(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    train_comps: np.ndarray | None = None,
    test_comps: np.ndarray | None = None,
    seed: int = 0,
    ns=FEWLABEL_N,
) -> dict:
    """fewlabel_lr_<n> and fewlabel_comp_<n> for each n: accuracies with n labelled training points per
    class. Null where not applicable: comp without mixture components, either when a class has < n points."""
    out = {}
    for n in ns:
        idx = fewlabel_subset(train_labels, n, seed)
        lr = comp = None
        if idx is not None:
            lr = fewlabel_logistic_accuracy(train_feats[idx], train_labels[idx], test_feats, test_labels)
            if train_comps is not None and test_comps is not None:
                comp = fewlabel_component_accuracy(train_comps[idx], train_labels[idx], test_comps, test_labels)
        out[f"fewlabel_lr_{n}"], out[f"fewlabel_comp_{n}"] = lr, comp
    return out
