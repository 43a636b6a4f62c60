"""Airflow DAG: re-index a folder into a freshindex table every 30 minutes, with the
Apache Beam provider's Python-pipeline operator (apache-airflow-providers-apache-beam).

Copy it into the DAGs folder of an Airflow whose workers have freshindex installed (the
operator runs ``python3 -m freshindex.pipelines.batch --runner=... --source=...`` there).
``max_active_runs=1`` keeps Airflow from starting a run while its previous one still runs;
``if_running: wait`` covers runs started outside Airflow (cron, a person): this run waits
for them (up to ``ingest.if_running_wait_s``, then exit status 2 and Airflow's retry).
docs/DEPLOY.md, "Scheduled re-indexing".
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator

with DAG(
    dag_id="freshindex_reindex_docs",
    schedule="*/30 * * * *",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=5)},
    tags=["freshindex"],
) as dag:
    BeamRunPythonPipelineOperator(
        task_id="reindex",
        py_interpreter="python3",
        py_options=["-m"],  # the pipeline is a module of the installed package
        py_file="freshindex.pipelines.batch",
        runner="DirectRunner",
        pipeline_options={
            "source": "/srv/docs",
            "db": "/srv/index/lancedb",
            "table": "docs",
            "if_running": "wait",
            "direct_num_workers": 2,
            "direct_running_mode": "multi_processing",
        },
    )
