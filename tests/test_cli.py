"""The freshindex command as a user runs it (in-process, FAKE embedder via --config)."""

from __future__ import annotations

import json

import yaml

from freshindex.cli import main


def cfg_file(tmp_path, fake_cfg, **ingest):
    raw = fake_cfg.to_dict()
    raw["ingest"].update(ingest)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_ingest_versions_errors_and_rollback(tmp_path, fake_cfg, corpus, capsys):
    cfg = cfg_file(tmp_path, fake_cfg, max_failure_fraction=0.5)
    (corpus / "broken.docx").write_bytes(b"not a docx")
    assert main(["ingest", str(corpus), "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "5 seen, 0 skipped, 4 added" in out and "1 failed" in out
    assert "chunks/s" in out and "errors recorded" in out

    assert main(["errors", "--config", cfg, "--run", "latest", "--json"]) == 0
    errors = json.loads(capsys.readouterr().out)
    assert [e["doc_id"] for e in errors] == ["broken.docx"]
    assert errors[0]["stage"] == "parse" and errors[0]["error_class"] == "CorruptDocument"

    (corpus / "guide/auth.md").unlink()
    assert main(["ingest", str(corpus), "--config", cfg, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["docs_deleted"] == 1

    assert main(["versions", "--config", cfg, "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)
    assert any(second["tag"] in v["tags"] for v in versions)
    first_run = next(v for v in versions if v["run"] and v["run"] != second["run_id"])

    assert main(["rollback", "--config", cfg, "--to", first_run["run"]]) == 0
    assert "restored docs" in capsys.readouterr().out
    assert main(["versions", "--config", cfg, "--json"]) == 0
    latest = json.loads(capsys.readouterr().out)[-1]
    assert latest["kind"] == "rollback" and latest["rows"] == first_run["rows"]


def test_too_many_failures_exit_non_zero(tmp_path, fake_cfg, corpus, capsys):
    cfg = cfg_file(tmp_path, fake_cfg, max_failure_fraction=0.1)
    (corpus / "a.docx").write_bytes(b"bad")
    assert main(["ingest", str(corpus), "--config", cfg]) == 3
    assert "over ingest.max_failure_fraction" in capsys.readouterr().err


def test_clear_errors_for_bad_arguments(tmp_path, fake_cfg, capsys):
    cfg = cfg_file(tmp_path, fake_cfg)
    assert main(["ingest", str(tmp_path / "missing"), "--config", cfg]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rollback", "--config", cfg, "--to", "1"]) == 2
    assert "run `freshindex ingest" in capsys.readouterr().err


def test_the_plain_beam_module_takes_pipeline_options(tmp_path, fake_cfg, corpus, capsys):
    from freshindex.pipelines.batch import main as beam_main

    cfg = cfg_file(tmp_path, fake_cfg)
    argv = ["--source", str(corpus), "--config", cfg, "--table", "other", "--sync", "append"]
    assert beam_main([*argv, "--runner", "DirectRunner", "--direct_num_workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "table other" in out and "4 added" in out
