"""What a compression did, layer by layer: sizes, weight error, output error on data.

`CompressionReport.to_dict()` is plain JSON (documented keys, stable across versions of the
same `format`); `str(report)` is a fixed-width table for terminals and logs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..tables import dataframe, flat

REPORT_FORMAT = "stabkern-compression-report-v1"
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class OutputError:
    """Relative output error ||A_hat z - A z|| / ||A z|| of one layer over data samples.

    A is the layer's linear map without bias (the bias is kept exactly, so it cancels), z the
    layer's input in the dense model. Samples with A z = 0 have no relative error: they are
    counted in `zero_output` and left out of every other figure. With no such sample left (the
    layer's output is zero on every sample) every figure is NaN ("undefined"; null in JSON).
    """

    samples: int
    zero_output: int
    mean: float
    q50: float
    q90: float
    q99: float
    max: float
    eps: float | None = None
    within_eps: float | None = None  # fraction of the counted samples with error <= eps

    @classmethod
    def from_samples(cls, errors: torch.Tensor, zero_output: int, eps: float | None = None) -> "OutputError":
        """errors: (samples,) relative errors of the samples with A z != 0."""
        e = errors.detach().to(torch.float64).cpu()
        if e.numel() == 0:
            nan = math.nan
            return cls(samples=0, zero_output=int(zero_output), mean=nan, q50=nan, q90=nan, q99=nan, max=nan,
                       eps=eps, within_eps=None if eps is None else nan)
        q = torch.quantile(e, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        within = None if eps is None else float((e <= eps).to(torch.float64).mean())
        return cls(samples=e.numel(), zero_output=int(zero_output), mean=float(e.mean()), q50=q[0], q90=q[1],
                   q99=q[2], max=float(e.max()), eps=eps, within_eps=within)


@dataclass
class LayerReport:
    """One compressed layer. n: weight entries; stored: numbers kept (k, or c_out * k in filter mode)."""

    name: str
    type: str
    stream: int
    mode: str
    shape: list[int]
    n: int
    k: int
    stored: int
    rel_fro_error: float  # ||A_hat - A||_F / ||A||_F of the weight
    output_error: OutputError | None = None
    tied_to: str | None = None  # the layer whose weight (and so sketch, stream included) this one shares

    @property
    def ratio(self) -> float:
        """Compression ratio of the weight: n / stored."""
        return self.n / self.stored

    @property
    def expected_rel_fro_error(self) -> float:
        """sqrt((m - 1) / k): the root of E||A_hat - A||_F^2 / ||A||_F^2 (m = entries per sketched vector)."""
        m = self.n if self.mode == "tensor" else self.n // self.shape[0]
        return math.sqrt((m - 1) / self.k)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["output_error"] is not None:  # undefined figures are NaN here, null in JSON
            d["output_error"] = {k: None if isinstance(v, float) and math.isnan(v) else v
                                 for k, v in d["output_error"].items()}
        d["ratio"] = self.ratio
        d["expected_rel_fro_error"] = self.expected_rel_fro_error
        return d


@dataclass
class CompressionReport:
    """The report of `compress_model`: compressed layers, skipped modules, folded BatchNorms.

    backend: the sign-op backend that ran (several joined by "+" when layers sit on different
    devices or dtypes; "none" when no layer was compressed), not the one requested.
    """

    seed: int
    mode: str
    backend: str
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"name", "type", "reason"}
    folded: list[dict] = field(default_factory=list)  # {"conv", "batchnorm"}
    eps: float | None = None

    def totals(self) -> dict:
        """Weight entries of the compressed layers, numbers stored for them, and their ratio (a weight
        shared by tied layers, and its one sketch, counted once)."""
        own = [r for r in self.layers if r.tied_to is None]
        dense = sum(r.n for r in own)
        stored = sum(r.stored for r in own)
        return {"dense": dense, "stored": stored, "ratio": dense / stored if stored else None}

    def to_dict(self) -> dict:
        """JSON-serializable dict with keys:

        format ("stabkern-compression-report-v1"), spec (sign spec), seed, mode, backend, eps;
        layers: list of {name, type ("Conv2d"/"Linear"), stream, mode, shape, n, k, stored,
        ratio (n / stored), rel_fro_error (||A_hat - A||_F / ||A||_F), expected_rel_fro_error
        (sqrt((m - 1) / k)), tied_to (null or the layer whose sketch it shares), output_error: null
        or {samples, zero_output, mean, q50, q90, q99, max, eps, within_eps} (null where
        undefined)}; skipped: list of {name, type, reason}; folded: list of
        {conv, batchnorm}; totals: {dense, stored, ratio}.
        """
        from ..spec import SPEC

        return {"format": REPORT_FORMAT, "schema_version": 1, "spec": SPEC, "seed": self.seed, "mode": self.mode,
                "backend": self.backend, "eps": self.eps, "layers": [r.to_dict() for r in self.layers],
                "skipped": list(self.skipped), "folded": list(self.folded), "totals": self.totals()}

    def layer_rows(self) -> list:
        """One flat dict per compressed layer (to_dict()'s layers, output_error's fields as output_error_*)."""
        return [flat({"layer": d.pop("name"), **d}) for d in self.to_dict()["layers"]]

    def to_dataframe(self):
        """layer_rows() as a pandas DataFrame indexed by layer name (needs pandas; ImportError otherwise)."""
        return dataframe(self.layer_rows(), "CompressionReport")

    def __str__(self) -> str:
        head = ["layer", "type", "stream", "n", "k", "stored", "ratio", "|dA|/|A|", "expect"]
        with_data = any(r.output_error is not None for r in self.layers)
        if with_data:
            head += ["out err mean", "q90", "max"]
            if self.eps is not None:
                head.append(f"<= {self.eps:g}")
        rows = []
        for r in self.layers:
            row = [r.name, r.type, str(r.stream), str(r.n), str(r.k), str(r.stored), f"{r.ratio:.1f}",
                   f"{r.rel_fro_error:.3f}", f"{r.expected_rel_fro_error:.3f}"]
            if with_data:
                e = r.output_error
                row += ["-"] * 3 if e is None else [f"{e.mean:.4f}", f"{e.q90:.4f}", f"{e.max:.4f}"]
                if self.eps is not None:
                    row.append("-" if e is None or e.within_eps is None else f"{e.within_eps:.1%}")
            rows.append(row)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths)))
        t = self.totals()
        lines = [f"stabkern compression: mode={self.mode}, seed={self.seed}, backend={self.backend}",
                 fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
        if t["stored"]:
            lines.append(f"total: {t['dense']} weights -> {t['stored']} numbers ({t['ratio']:.1f}x)")
        lines += [f"folded: {f['batchnorm']} into {f['conv']}" for f in self.folded]
        lines += [f"skipped: {s['name']} ({s['type']}): {s['reason']}" for s in self.skipped]
        return "\n".join(lines)
