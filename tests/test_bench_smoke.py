"""The benchmark runs and writes well-formed figures. Timings are never asserted (see bench/README.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_bench_smoke_run_writes_well_formed_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "non-stream latency" in proc.stdout  # the table was printed

    result = json.loads(out.read_text())
    assert result["mode"] == "smoke"
    assert set(result["targets"]) == {"direct", "gateway"}
    for name in ("direct", "gateway"):
        summary = result["summary"][name]
        assert summary["nonstream"] and summary["stream"] and summary["ttft"]
        for row in summary["nonstream"]:
            assert _number(row["p50_ms"]) and _number(row["p99_ms"]) and row["n"] > 0
        assert _number(summary["ttft"]["p50_ms"]) and _number(summary["ttft"]["p99_ms"])
        for row in summary["stream"]:
            assert _number(row["chunks_per_s"]) and row["chunks"] > 0
            assert isinstance(row["errors"], int) and isinstance(row["incomplete"], int)
        assert isinstance(summary["errors"], int) and isinstance(summary["incomplete"], int)
    at_max = result["summary"]["gateway"]["at_max_streams"]
    assert _number(at_max["proxy_cpu_s_per_1k_chunks"]) and _number(at_max["proxy_peak_rss_mb"])

    comparison = result["comparison"]["gateway"]
    assert {row["concurrency"] for row in comparison["added_nonstream_ms"]} == {1, 4}
    assert _number(comparison["added_ttft_ms"]["p50"])
    assert [row["concurrency"] for row in comparison["chunk_rate_ratio"]] == [1, 4, 8]
    assert all(_number(row["ratio"]) for row in comparison["chunk_rate_ratio"])
    assert set(result["verdict"]) >= {
        "added_nonstream_p50_c1_ms",
        "added_ttft_p50_ms",
        "chunk_rate_ratio_at_max",
        "cpu_s_per_1k_chunks",
        "peak_rss_mb",
    }
