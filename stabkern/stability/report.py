"""Reports of the meters: numbers kept as numpy arrays, `to_dict()` as documented JSON-ready dicts.

Per-sample quantities are summarized by `summarize`: the paper's quantities are minima or maxima over
the data, so every distribution reports

    {"min", "q05", "q25", "median", "q75", "q95", "max", "mean", "n"}

(quantiles over the samples; NaN entries, e.g. a sample whose layer output is exactly zero, are left
out and not counted in n). In JSON, NaN becomes null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..tables import dataframe, pandas

QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}


def summarize(values) -> dict:
    """Distribution of per-sample values (1-D): min, q05, q25, median, q75, q95, max, mean, n."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"min": math.nan, **{k: math.nan for k in QUANTILES}, "max": math.nan, "mean": math.nan, "n": 0}
    out = {"min": float(v.min())}
    out.update({k: float(np.quantile(v, q)) for k, q in QUANTILES.items()})
    out.update({"max": float(v.max()), "mean": float(v.mean()), "n": int(v.size)})
    return out


def t_quantile95(probes: int) -> float:
    """The Student-t 97.5% quantile with probes - 1 degrees of freedom: the half-width, in standard errors, of
    the 95% interval of a mean over `probes` draws whose standard error is estimated from the same draws
    (12.71 at 2 probes, 3.18 at 4, 2.13 at 16; the normal 1.96 only as probes -> infinity)."""
    if probes < 2:
        raise ValueError(f"probes must be at least 2 for an interval (the standard error needs 2 draws), got {probes}")
    from scipy import stats  # here, not at import: scipy.stats costs seconds on every `import stabkern`

    return float(stats.t.ppf(0.975, probes - 1))


def interval95(mu: np.ndarray, rse: np.ndarray, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's 95% interval (low, high) = mu (1 -+ t rse) of a Hutchinson estimate mu with relative
    standard error rse over `probes` probes, t = t_quantile95(probes); low clamped at 0 (a cushion is >= 0).

    Why t and not the normal 1.96: rse is estimated from the same few probes, so (mu_hat - mu) / (rse mu_hat)
    is t-like, with heavy tails at 4 probes; 1.96 covered 91% (lower end) and 85% (both ends) against exact
    Jacobians of the trained digits net at 4 probes. With t the lower end covers 96.5% there (both ends
    94.7%; tests/stability/test_measure_coverage.py). It is an approximation: ||J^T v||^2 is skewed to the
    right, most where one direction dominates the Jacobian beside a flat rest, and there the lower end can
    cover less than its nominal 97.5% (down to ~83% at 4 probes in simulation); more probes shrink that."""
    t = t_quantile95(probes)
    return np.maximum(mu * (1 - t * rse), 0.0), mu * (1 + t * rse)


def json_value(x):
    """NaN/Inf-free JSON value: numpy arrays to nested lists, NaN to None."""
    if isinstance(x, dict):
        return {k: json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_value(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_value(x.tolist())
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


# The per-layer columns of a measure report (measure_rows): (column, meter key in to_dict(), statistic)
DISTRIBUTION_COLUMNS = (
    ("layer_cushion_min", "layer_cushion", "min"), ("layer_cushion_median", "layer_cushion", "median"),
    ("interlayer_cushion_min", "interlayer_cushion", "min"),
    ("interlayer_cushion_median", "interlayer_cushion", "median"),
    ("activation_contraction_max", "activation_contraction", "max"),
    ("interlayer_smoothness_min", "interlayer_smoothness", "min"),
    ("interlayer_smoothness_literal_min", "interlayer_smoothness_literal", "min"),
    ("jacobian_spread_max", "jacobian_spread", "max"),
    ("noise_sensitivity_median", "noise_sensitivity", "median"), ("noise_sensitivity_max", "noise_sensitivity", "max"),
)


def measure_rows(d: dict) -> list:
    """One dict per metered layer from a measure report's to_dict() `d` (forward order): layer, type, the
    extremes the bound uses and the median of each per-sample meter (DISTRIBUTION_COLUMNS), identity_term
    (1/sqrt(h_i), mu_{i,i}), attenuation_to_output (mean r[i, last]), the operator norms (spectral, frobenius,
    l21, l1inf), weights (entries) and log10_k_chain (the chain bound's k for the layer). None where undefined
    (a meter without the layer, e.g. the last layer's smoothness)."""
    att, b = d["attenuation"], d["bound"]
    norms = b.get("operator_norms", {})
    k_chain = b.get("layer_k_log10", {}).get("ours") or [None] * len(d["layers"])
    rows = []
    for i, name in enumerate(d["layers"]):
        row = {"layer": name, "type": att["layer_types"][i]}
        for column, meter, stat in DISTRIBUTION_COLUMNS:
            row[column] = (d.get(meter, {}).get(name) or {}).get(stat)
        row["identity_term"] = ((d["interlayer_cushion"].get(name) or {}).get("to", {}).get(name) or {}).get("min")
        row["attenuation_to_output"] = att["mean"][i][-1]
        for key in ("spectral", "frobenius", "l21", "l1inf"):
            row[f"{key}_norm"] = (norms.get(name) or {}).get(key)
        row["weights"] = b.get("layer_weights", {}).get(name)
        row["log10_k_chain"] = json_value(k_chain[i])
        rows.append(row)
    return rows


@dataclass
class AttenuationReport:
    """Noise attenuation r[i, j] = ||x_hat^j - x^j|| / ||x^j|| for noise injected at layer i's input.

    Arrays are (L, L) indexed [injection layer i, observation layer j], NaN for j < i:
    `mean` (over samples and trials), `std` (spread of the per-sample, per-trial ratio), `ci_low` /
    `ci_high` (95% interval of the mean over the data: samples are the unit, trials averaged within),
    `mc_se` (Monte Carlo standard error of `mean` from the noise alone, the data held fixed) and
    `floor` (mean ratio with alpha = 0, i.e. pure rounding of the noisy pass; None in fp32).
    `per_sample` is (N, L, L): each sample's mean over trials; `per_sample_sq` the mean of r^2.
    """

    layers: list
    layer_types: list
    alpha: float
    trials: int
    seed: int
    precision: str
    method: str
    device: str
    mean: np.ndarray
    std: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    mc_se: np.ndarray
    per_sample: np.ndarray = field(repr=False)
    per_sample_sq: np.ndarray = field(repr=False)
    floor: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return int(self.per_sample.shape[0])

    def to_dict(self) -> dict:
        """JSON-ready dict. Keys: "layers" (names, forward order), "layer_types", "alpha", "trials",
        "seed", "precision", "method" ("graph" or "hooks"), "device", "n_samples", and (L, L) nested
        lists [injection][observation] with null below the diagonal: "mean", "std", "ci_low",
        "ci_high", "mc_se", "floor" (null in fp32)."""
        d = {"format": "stabkern-attenuation-report-v1", "schema_version": 1,  # stabkern/schemas/, docs/card.md
             "layers": list(self.layers), "layer_types": list(self.layer_types), "alpha": self.alpha,
             "trials": self.trials, "seed": self.seed, "precision": self.precision, "method": self.method,
             "device": self.device, "n_samples": self.n_samples}
        for key in ("mean", "std", "ci_low", "ci_high", "mc_se"):
            d[key] = getattr(self, key)
        d["floor"] = self.floor
        return json_value(d)

    def plot(self, ax=None, path=None):
        """The paper's attenuation figure: one curve per injection layer, log-scale y. Returns the axes."""
        from .plots import plot_attenuation
        return plot_attenuation(self, ax=ax, path=path)

    def to_dataframe(self):
        """The mean matrix as a pandas DataFrame: rows the injection layers i, columns the observation layers j,
        NaN for j < i (needs pandas; ImportError otherwise)."""
        pd = pandas("AttenuationReport")
        return pd.DataFrame(self.mean, index=pd.Index(self.layers, name="injected at"),
                            columns=pd.Index(self.layers, name="observed at"))

    def table(self, digits: int = 3) -> str:
        """The mean matrix as a markdown table (rows: injection layer, columns: observation layer)."""
        head = "| inject \\ observe | " + " | ".join(self.layers) + " |"
        rule = "|---" * (len(self.layers) + 1) + "|"
        rows = []
        for i, name in enumerate(self.layers):
            cells = ["" if np.isnan(v) else f"{v:.{digits}g}" for v in self.mean[i]]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join([head, rule, *rows])


@dataclass
class StabilityReport:
    """Everything `stabkern.measure` meters, keyed by layer (module) name; see `to_dict`.

    `interlayer_smoothness` is the bias-aware rho (the one the bound uses), `interlayer_smoothness_literal`
    the paper's literal form (meters.py explains both); `jacobian_spread` the well-distributed-Jacobian
    beta per layer (max over later layers) with its number of positions.
    """

    layers: list
    layer_cushion: dict
    interlayer_cushion: dict
    activation_contraction: dict
    interlayer_smoothness: dict
    noise_sensitivity: dict
    attenuation: AttenuationReport
    bound: dict
    settings: dict
    interlayer_smoothness_literal: dict = field(default_factory=dict)
    jacobian_spread: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict with keys "layers", "layer_cushion", "interlayer_cushion",
        "activation_contraction", "interlayer_smoothness", "interlayer_smoothness_literal",
        "jacobian_spread", "noise_sensitivity", "attenuation", "bound", "settings"; per-layer meters map
        a module name to a `summarize` dict, e.g. d["layer_cushion"]["features.0"]["min"]."""
        return json_value({
            "format": "stabkern-measure-report-v1", "schema_version": 1,  # stabkern/schemas/, docs/card.md
            "layers": list(self.layers),
            "layer_cushion": self.layer_cushion,
            "interlayer_cushion": self.interlayer_cushion,
            "activation_contraction": self.activation_contraction,
            "interlayer_smoothness": self.interlayer_smoothness,
            "interlayer_smoothness_literal": self.interlayer_smoothness_literal,
            "jacobian_spread": self.jacobian_spread,
            "noise_sensitivity": self.noise_sensitivity,
            "attenuation": self.attenuation.to_dict(),
            "bound": self.bound,
            "settings": self.settings,
        })

    def layer_rows(self) -> list:
        """One dict per layer of every per-layer meter (measure_rows): the rows of the card's layers.csv."""
        return measure_rows(self.to_dict())

    def to_dataframe(self):
        """layer_rows() as a pandas DataFrame indexed by layer name (needs pandas; ImportError otherwise)."""
        return dataframe(self.layer_rows(), "StabilityReport")

    def plot(self, folder=None) -> dict:
        """Every figure: attenuation (Figure 3), cushions and the bound chart (Figure 4), readable with 100+
        layers (a colorbar replaces the legend, layer names are thinned). With `folder`, PNGs are written
        there and their paths returned; else {name: matplotlib figure}."""
        from .plots import plot_report
        return plot_report(self, folder)
