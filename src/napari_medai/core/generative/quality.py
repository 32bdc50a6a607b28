"""How good are generated patches? Measured against held-out real patches.

All functions take (n, y, x) arrays with intensities normalised to [0, 1].

- :func:`mmd2`: squared maximum mean discrepancy with a Gaussian kernel (a
  linear kernel would only compare means); bandwidth by the median heuristic
  (median pairwise distance), by default over the real patches so every
  generator and baseline is measured with the same kernel. Unbiased estimate,
  0 when the two sets come from one distribution.
- :func:`ms_ssim_diversity`: mean MS-SSIM (MONAI ``MultiScaleSSIMMetric``)
  between random pairs within a set; lower means more diverse. A collapsed
  generator scores near 1.
- :func:`histogram_distance`: 1-Wasserstein distance between the intensity
  histograms (in normalised units, 0 = same histogram).
- :func:`two_sample_accuracy_job`: held-out accuracy of a small MONAI
  ``Classifier`` trained to tell real from generated; 0.5 = indistinguishable.
  Its control, the same classifier telling two draws of real patches apart,
  should score about 0.5: higher would mean the test itself is unfair.
- :func:`verdict`: one sentence saying whether the generator is useful yet,
  from the two-sample accuracy and the MMD² of two noise baselines (Gaussian
  noise with the real patches' mean and spread, and real patches with their
  pixels shuffled), measured with the same kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric
from monai.networks.nets import Classifier

from napari_medai.core.jobs import Job, Progress, scaled

#: MS-SSIM's standard scale weights (Wang et al. 2003); the first ones are used
#: when a patch is too small for five scales.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 7
HISTOGRAM_BINS = 64
#: A two-sample classifier right this often tells nearly every sample from a real
#: patch. Chance is 0.5, give or take 0.044 (one standard deviation) on the 128
#: held-out patches of a default run; bench/gan.py's GAN after 300 CPU-seconds on
#: a real CT scored 0.996 and looked like noise.
NOT_USEFUL_ACCURACY = 0.9


def _flat(patches: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(patches, dtype=np.float64).reshape(len(patches), -1))


def median_bandwidth(patches: np.ndarray) -> float:
    """The median pairwise Euclidean distance within ``patches`` (median heuristic)."""
    flat = _flat(patches)
    distances = torch.cdist(flat, flat)
    upper = distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)]
    return float(upper.median()) or 1.0


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between two patch sets, Gaussian kernel.

    ``bandwidth`` (sigma) defaults to the median heuristic over ``y`` (the real set).
    """
    sigma = bandwidth or median_bandwidth(y)
    fx, fy = _flat(x), _flat(y)
    kernel = lambda a, b: torch.exp(-(torch.cdist(a, b) ** 2) / (2 * sigma**2))  # noqa: E731
    kxx, kyy, kxy = kernel(fx, fx), kernel(fy, fy), kernel(fx, fy)
    n, m = len(fx), len(fy)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def _ms_ssim_weights(size: int) -> tuple[float, ...]:
    """As many MS-SSIM scales as a ``size`` patch allows with the kernel (MONAI's rule)."""
    for count in range(len(MS_SSIM_WEIGHTS), 1, -1):
        if size // max(1, count - 1) ** 2 > MS_SSIM_KERNEL - 1:
            weights = MS_SSIM_WEIGHTS[:count]
            return tuple(w / sum(weights) for w in weights)
    return (1.0,)


def ms_ssim_diversity(patches: np.ndarray, pairs: int = 64, seed: int = 0) -> float:
    """Mean MS-SSIM between ``pairs`` random pairs of different patches (lower = more diverse)."""
    rng = np.random.default_rng(seed)
    n = len(patches)
    first = rng.integers(n, size=pairs)
    second = (first + rng.integers(1, n, size=pairs)) % n
    images = torch.from_numpy(np.asarray(patches, dtype=np.float32))[:, None]
    metric = MultiScaleSSIMMetric(
        spatial_dims=2,
        data_range=1.0,
        kernel_size=MS_SSIM_KERNEL,
        weights=_ms_ssim_weights(min(patches.shape[1:])),
    )
    return float(metric(images[first], images[second]).nanmean())


def histogram_distance(x: np.ndarray, y: np.ndarray, bins: int = HISTOGRAM_BINS) -> float:
    """1-Wasserstein distance between the two sets' intensity histograms on [0, 1]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    hx = np.histogram(np.clip(x, 0, 1), edges)[0].astype(np.float64)
    hy = np.histogram(np.clip(y, 0, 1), edges)[0].astype(np.float64)
    cdf = np.cumsum(hx / hx.sum() - hy / hy.sum())
    return float(np.abs(cdf).sum() / bins)


def two_sample_accuracy_job(
    real: np.ndarray, fake: np.ndarray, steps: int = 150, seed: int = 0
) -> Job[float]:
    """Train a small classifier on half of each set; its accuracy on the other half.

    0.5 means the classifier cannot tell generated from real patches; 1.0 means
    it always can. Yields progress every few steps.
    """
    generator = torch.Generator().manual_seed(seed)
    n = min(len(real), len(fake))
    half = n // 2
    order_r = torch.randperm(len(real), generator=generator)[:n]
    order_f = torch.randperm(len(fake), generator=generator)[:n]
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[:, None]  # noqa: E731
    r, f = as_tensor(real)[order_r], as_tensor(fake)[order_f]
    train_x = torch.cat([r[:half], f[:half]])
    train_y = torch.cat([torch.ones(half), torch.zeros(half)])
    test_x = torch.cat([r[half:], f[half:]])
    test_y = torch.cat([torch.ones(n - half), torch.zeros(n - half)])
    torch.manual_seed(seed)
    model = Classifier(
        in_shape=tuple(train_x.shape[1:]),
        classes=1,
        channels=(8, 16, 32),
        strides=(2, 2, 2),
        num_res_units=0,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = torch.nn.BCEWithLogitsLoss()
    model.train()
    for step in range(steps):
        pick = torch.randint(len(train_x), (32,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss(model(train_x[pick])[:, 0], train_y[pick]).backward()
        optimizer.step()
        if step % 10 == 0:
            yield Progress(step / steps, "two-sample test")
    model.eval()
    with torch.no_grad():
        predicted = model(test_x)[:, 0] > 0
    return float((predicted == test_y.bool()).float().mean())


def noise_baselines(real: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Sets any generator must beat: Gaussian noise like ``real``, and ``real`` shuffled.

    The noise has the real patches' mean and standard deviation (clipped to
    [0, 1]); the shuffled patches keep each real patch's histogram and lose its
    structure.
    """
    rng = np.random.default_rng(seed)
    real = np.asarray(real, dtype=np.float64)
    noise = np.clip(rng.normal(real.mean(), real.std(), size=real.shape), 0.0, 1.0)
    shuffled = np.stack([rng.permutation(p.ravel()).reshape(p.shape) for p in real])
    return {"noise": noise, "shuffled": shuffled}


def verdict(report: dict[str, Any]) -> str:
    """Whether the measured generator is useful yet, in one sentence for the user."""
    accuracy = report["two_sample_accuracy"]
    floor = min(report["mmd2_noise"], report["mmd2_shuffled"])
    problems = []
    if accuracy >= NOT_USEFUL_ACCURACY:
        problems.append(
            f"a classifier tells its samples from real patches {accuracy:.0%} of the time "
            "(50% would mean it cannot)"
        )
    if report["mmd2"] >= floor:
        problems.append(
            f"its samples are no closer to real patches than noise is "
            f"(MMD² {report['mmd2']:.4f}, noise {floor:.4f})"
        )
    if problems:
        return f"Not yet useful: {' and '.join(problems)}; train longer."
    return (
        f"Closer to real patches than noise (MMD² {report['mmd2']:.4f}, noise {floor:.4f}); "
        f"a classifier tells its samples from real patches {accuracy:.0%} of the time "
        "(50% would mean it cannot). Look at the samples before using them."
    )


def quality_job(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int = 0,
    steps: int = 150,
    control: np.ndarray | None = None,
) -> Job[dict[str, Any]]:
    """Every measure of ``fake`` against ``real`` (both (n, y, x) in [0, 1]) and its verdict.

    ``control``, a second draw of real patches, gives the two-sample test's
    real-against-real accuracy (the figure it scores when nothing differs).
    """
    yield Progress(0.0, "measuring MMD")
    bandwidth = median_bandwidth(real)
    baselines = noise_baselines(real, seed)
    report: dict[str, Any] = {
        "mmd2": mmd2(fake, real, bandwidth),
        "mmd2_noise": mmd2(baselines["noise"], real, bandwidth),
        "mmd2_shuffled": mmd2(baselines["shuffled"], real, bandwidth),
        "mmd_bandwidth": bandwidth,
        "histogram_distance": histogram_distance(fake, real),
        "ms_ssim_diversity": ms_ssim_diversity(fake, seed=seed),
        "ms_ssim_diversity_real": ms_ssim_diversity(real, seed=seed),
        "real_patches": int(len(real)),
        "generated_patches": int(len(fake)),
    }
    yield Progress(0.3, "two-sample test")
    end = 1.0 if control is None else 0.65
    accuracy = yield from scaled(two_sample_accuracy_job(real, fake, steps, seed), 0.3, end)
    report["two_sample_accuracy"] = accuracy
    if control is not None:
        report["two_sample_accuracy_real_vs_real"] = yield from scaled(
            two_sample_accuracy_job(real, control, steps, seed), end, 1.0
        )
    report = {k: round(v, 5) if isinstance(v, float) else v for k, v in report.items()}
    return {**report, "verdict": verdict(report)}
