"""yoloslim/pipeline/stages.py:run_parallel: jobs in their own processes, results in job order, errors raised here."""
import os
import time

import pytest
import torch

from yoloslim.pipeline.stages import run_parallel


def where(tag, delay=0.0):
    """A job: which process ran it, on how many torch threads (the slow first job finishes last)."""
    time.sleep(delay)
    return {"tag": tag, "pid": os.getpid(), "threads": torch.get_num_threads()}


def fail_if(tag, bad):
    if tag == bad:
        raise ValueError(f"job {tag} failed")
    return tag


def test_jobs_run_in_worker_processes_and_return_in_job_order():
    jobs = [dict(tag="a", delay=3.0), dict(tag="b"), dict(tag="c")]
    results = run_parallel(where, jobs, workers=2, threads=3)       # not torch's default on any machine here
    assert [r["tag"] for r in results] == ["a", "b", "c"]
    assert all(r["pid"] != os.getpid() for r in results)
    assert len({r["pid"] for r in results}) <= 2          # never more processes than workers
    assert all(r["threads"] == 3 for r in results)


def test_one_worker_runs_the_jobs_here():
    results = run_parallel(where, [dict(tag="a"), dict(tag="b")], workers=1)
    assert [(r["tag"], r["pid"]) for r in results] == [("a", os.getpid()), ("b", os.getpid())]


def test_a_failing_job_raises_its_own_error_here():
    with pytest.raises(ValueError, match="job b failed"):
        run_parallel(fail_if, [dict(tag=t, bad="b") for t in "abc"], workers=2)
