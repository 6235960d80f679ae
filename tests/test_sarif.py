"""`predict --format sarif` / `--output FILE.sarif`: SARIF 2.1.0 for GitHub code scanning."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO

LEVELS = {"none", "note", "warning", "error"}


def _check_sarif(doc: dict) -> list[dict]:
    """The structure GitHub code scanning requires of a SARIF 2.1.0 upload; returns the results."""
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(doc["runs"], list) and len(doc["runs"]) == 1
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "lolscan" and driver["version"]
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(set(rule_ids)) == len(rule_ids)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["defaultConfiguration"]["level"] in LEVELS
    for res in run["results"]:
        assert res["ruleId"] in rule_ids and rule_ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in LEVELS
        assert isinstance(res["message"]["text"], str) and res["message"]["text"]
        assert res["locations"] and all(loc["physicalLocation"]["artifactLocation"]["uri"] for loc in res["locations"])
    return run["results"]


def _predict(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOLSCAN_DATA_DIR": str(tmp_path / "data")}
    env.pop("LOLSCAN_MODELS_DIR", None)
    return subprocess.run([sys.executable, "-m", "lolscan", "predict", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_sarif_reports_gate_failures_unfit_and_unreadable_adapters(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 16)
    r = _predict(tmp_path, "models/examples", "models/examples-qwen/lora-00077", str(bad),
                 "--fail-over", "val_loss=2.8", "--format", "sarif", "--output", str(tmp_path / "out.sarif"))
    assert r.returncode == 4, r.stderr
    doc = json.loads(r.stdout)
    assert json.loads((tmp_path / "out.sarif").read_text()) == doc
    results = _check_sarif(doc)
    by_rule: dict[str, list[dict]] = {}
    for res in results:
        by_rule.setdefault(res["ruleId"], []).append(res)
    assert len(by_rule["lolscan/does-not-fit"]) == 1 and len(by_rule["lolscan/unreadable"]) == 1
    uris = {res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for res in by_rule["lolscan/does-not-fit"]}
    assert uris == {"models/examples-qwen/lora-00077/adapter_config.json"}  # repository-relative, a real file
    # each gate failure is one result, and they are exactly the examples predicted above 2.8
    report = json.loads(_predict(tmp_path, "models/examples", "-f", "json").stdout)
    above = sorted(row["source"] for row in report["results"] if row["predictions"]["val_loss"]["value"] > 2.8)
    gates = by_rule.get("lolscan/gate-failed", [])
    assert above and len(gates) == len(above)
    assert sorted(g["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].rsplit("/", 1)[0] for g in gates) == above
    assert all(g["properties"]["bound"] == 2.8 < g["properties"]["value"] for g in gates)


def test_sarif_with_nothing_wrong_is_a_valid_empty_run(tmp_path):
    r = _predict(tmp_path, "models/examples/lora-00553", "-f", "sarif")
    assert r.returncode == 0, r.stderr
    assert _check_sarif(json.loads(r.stdout)) == []
